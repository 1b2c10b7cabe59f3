"""Bad input gets a clear error, as JSON, and changes nothing."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from loadtest.server import Server
from tests.e2e.helpers import sample_input

pytestmark = pytest.mark.e2e


def _names(server: Server) -> list[str]:
    return sorted(f["name"] for f in server.client.get("/v1/functions").json()["functions"])


def _error(r, status: int, *fragments: str) -> None:  # type: ignore[no-untyped-def]
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    msg = r.json()["error"]
    for f in fragments:
        assert f in msg, msg
    assert "Traceback" not in msg


def test_unknown_function_is_404(server: Server) -> None:
    _error(server.invoke("nope", sample_input("mlp")), 404, "'nope'")
    _error(server.client.get("/v2/models/nope"), 404, "not deployed")
    _error(server.client.delete("/v1/functions/nope"), 404)
    _error(server.client.get("/no/such/route"), 404)


def test_malformed_json_is_400(server: Server) -> None:
    r = server.client.post(
        "/v1/functions/mlp/invoke", content=b'{"inputs": [', headers={"content-type": "application/json"}
    )
    _error(r, 400, "malformed JSON")
    _error(server.client.post("/v1/functions/mlp/invoke", json={"nothing": 1}), 400, "inputs")


def test_wrong_input_name_shape_datatype_count_are_400_naming_the_expectation(server: Server) -> None:
    good = sample_input("mlp")[0]
    _error(server.invoke("mlp", [{**good, "name": "x"}]), 400, "unknown input 'x'", "input FP32[-1, 64]")
    _error(server.invoke("mlp", [{**good, "shape": [1, 32]}]), 400, "expected shape [-1, 64]", "[1, 32]")
    _error(server.invoke("mlp", [{**good, "datatype": "INT64"}]), 400, "expected datatype FP32", "INT64")
    _error(server.invoke("mlp", [{**good, "data": good["data"][:-1]}]), 400, "needs 64 elements", "has 63")
    _error(server.invoke("mlp", [{**good, "data": ["a"] * 64}]), 400, "not FP32")
    _error(server.invoke("mlp", []), 400, "missing input 'input'")
    _error(
        server.invoke("bert", [{"name": "input_ids", "shape": [1, 2], "datatype": "INT64", "data": [1, 2**70]}]),
        400,
        "not INT64",
    )
    r = server.client.post("/v2/models/mlp/infer", json={"inputs": [good], "outputs": [{"name": "nope"}]})
    _error(r, 400, "unknown output 'nope'")


def test_inference_paths_keep_http_semantics(server: Server) -> None:
    """Inference skips Starlette's routing: other methods, odd paths and streamed bodies still behave."""
    _error(server.client.get("/v1/functions/mlp/invoke"), 405)
    _error(server.client.put("/v2/models/mlp/infer", json={}), 405)
    assert server.client.post("/v1/functions/mlp/invoke/", json={}).status_code in (307, 404)
    body = b'{"inputs": [%s]}' % orjson.dumps(sample_input("mlp")[0])

    def chunks():  # type: ignore[no-untyped-def]
        for i in range(0, len(body), 7):  # sent chunked: the body arrives in several messages
            yield body[i : i + 7]

    r = server.client.post("/v2/models/mlp/versions/1/infer", content=chunks())
    assert r.status_code == 200 and r.json()["model_name"] == "mlp", r.text
    assert r.headers["content-length"] == str(len(r.content))
    assert {"x-torpor-queue-ms", "x-torpor-exec-ms", "x-torpor-device", "x-torpor-batch"} <= set(r.headers)
    _error(server.client.post("/v1/functions/mlp/invoke", content=b'{"inputs": [}'), 400, "malformed JSON")
    r = server.client.post("/v1/functions/mlp/invoke", content=body, headers={"inference-header-content-length": "x"})
    _error(r, 400, "Inference-Header-Content-Length")


def test_body_over_the_limit_is_413(server: Server) -> None:
    r = server.client.post(
        "/v1/functions/mlp/invoke", content=b"x" * (17 << 20), headers={"content-type": "application/json"}
    )
    _error(r, 413, "limit")


def test_bad_deploys_are_400_and_leave_the_registry_unchanged(server: Server, tmp_path: Path) -> None:
    before = _names(server)
    corrupt = tmp_path / "corrupt.pt2"
    corrupt.write_bytes(b"PK\x03\x04 definitely not a zip")
    cases = [
        ("x1", {"model": {"zoo": "resnet9000"}, "slo_ms": 100}, "unknown model 'resnet9000'"),
        ("x2", {"model": {"path": str(tmp_path / "missing.pt2")}, "slo_ms": 100}, "no such file"),
        ("x3", {"model": {"path": str(corrupt)}, "slo_ms": 100}, "not a torch.export"),
        ("x4", {"model": {"zoo": "mlp"}}, "slo_ms"),
        ("x5", {"model": {"zoo": "mlp"}, "slo_ms": -1}, "slo_ms"),
        ("x6", {"model": {"zoo": "mlp", "seed": "one"}, "slo_ms": 5}, "model.seed"),
        ("x7", {"model": {"zoo": "mlp"}, "slo_ms": 5, "input_spec": [{"name": "a"}]}, "input_spec[0].datatype"),
        ("x8", {"model": {"zoo": "mlp"}, "slo_ms": 5, "colour": "red"}, "unknown field"),
        ("Bad_Name", {"model": {"zoo": "mlp"}, "slo_ms": 5}, "function name"),
        ("a..b", {"model": {"zoo": "mlp"}, "slo_ms": 5}, "function name"),
        ("-lead", {"model": {"zoo": "mlp"}, "slo_ms": 5}, "function name"),
    ]
    for name, body, fragment in cases:
        _error(server.deploy(name, body), 400, fragment)
    r = server.client.put("/v1/functions/x9", content=b"{nope", headers={"content-type": "application/json"})
    _error(r, 400, "malformed JSON")
    assert _names(server) == before
