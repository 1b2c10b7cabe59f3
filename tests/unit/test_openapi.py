"""The OpenAPI description against the code it describes: routes, methods, names, model shapes."""

from __future__ import annotations

import shutil
from pathlib import Path

import jsonschema_rs
import pytest
from starlette.routing import Route

from gateway import deploy, openapi
from gateway.app import build_app
from gateway.registry import check_name
from gateway.service import Service
from shared import zoo
from shared.config import ServeConfig
from shared.errors import InvalidInput
from shared.specs import DATATYPES


def test_constants_match_the_code() -> None:
    assert list(openapi.ZOO_MODELS) == zoo.names()
    assert openapi.MAX_SEED == deploy.MAX_SEED
    assert set(openapi.DATATYPES) == set(DATATYPES)


def test_every_route_and_method_is_described_and_nothing_else(tmp_path: Path) -> None:
    service = Service(ServeConfig(state_dir=tmp_path))
    shutil.rmtree(service.pool.runtime_dir)  # never started: nothing else to release
    app = build_app(service)
    routed = {r.path: (r.methods or set()) - {"HEAD"} for r in app.inner.routes if isinstance(r, Route)}
    doc = openapi.document()
    described = {p: {m.upper() for m in ops if m != "parameters"} for p, ops in doc["paths"].items()}
    assert described == routed


def test_admin_operations_declare_security_only_with_a_token() -> None:
    plain, admin = openapi.document(), openapi.document(admin=True)
    secured = {(path, method) for path, ops in admin["paths"].items() for method, op in ops.items() if "security" in op}
    assert secured == {
        ("/v1/functions/{name}", "put"),
        ("/v1/functions/{name}", "delete"),
        ("/v2/repository/models/{name}/load", "post"),
        ("/v2/repository/models/{name}/unload", "post"),
    }
    assert not any("security" in op for ops in plain["paths"].values() for op in ops.values() if isinstance(op, dict))


@pytest.mark.parametrize(
    ("model", "valid"),
    [
        ({"zoo": "mlp"}, True),
        ({"zoo": "bert-base", "seed": 7}, True),
        ({"path": "/models/m.pt2"}, True),
        ({}, False),
        ({"zoo": "mlp", "path": "/m.pt2"}, False),
        ({"zoo": "vgg"}, False),
        ({"zoo": "mlp", "seed": -1}, False),
        ({"path": ""}, False),
    ],
)
def test_model_is_one_of_two_shapes_as_the_server_checks(model: dict[str, object], valid: bool, tmp_path: Path) -> None:
    schemas = openapi.document()["components"]["schemas"]
    validator = jsonschema_rs.validator_for({"oneOf": [schemas["ZooModel"], schemas["FileModel"]]})
    assert validator.is_valid(model) is valid
    if "path" in model and model["path"]:
        real = tmp_path / "m.pt2"
        real.write_bytes(b"")
        model = {**model, "path": str(real)}
    if valid:
        deploy.parse("f", {"model": model, "slo_ms": 10})
    else:
        with pytest.raises(InvalidInput, match="^model"):
            deploy.parse("f", {"model": model, "slo_ms": 10})


@pytest.mark.parametrize("name", ["mlp", "a", "a.b-c_d", "a..b", "-a", "A", "a" * 63, "a" * 64, ".a", "a/b"])
def test_name_pattern_agrees_with_the_registry(name: str) -> None:
    import re

    try:
        check_name(name)
        accepted = True
    except InvalidInput:
        accepted = False
    assert bool(re.match(openapi.NAME_PATTERN, name)) is accepted
