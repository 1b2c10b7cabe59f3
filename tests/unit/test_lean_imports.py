"""The gateway's serving modules never import torch; the zoo's torch-free name list matches the zoo."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from shared import zoo
from shared.catalog import ZOO_NAMES

SERVING = ("gateway.app", "gateway.serve", "gateway.service", "gateway.cli", "gateway.deploy", "gateway.workers")


def test_importing_the_gateway_serving_modules_does_not_import_torch() -> None:
    code = (
        "import sys\n"
        + "".join(f"import {m}\n" for m in SERVING)
        + "bad = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))\n"
        + "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "", f"the gateway imported {out.stdout.strip()}"


def test_zoo_catalog_lists_the_zoo() -> None:
    assert list(ZOO_NAMES) == zoo.names()


def test_a_malformed_builder_reply_is_a_protocol_error_and_an_error_reply_is_rebuilt() -> None:
    import pytest

    from gateway.deploy import _built
    from shared.errors import InvalidInput, ProtocolError

    with pytest.raises(InvalidInput, match="needs 2 GiB"):
        _built({}, {"error": {"kind": "invalid_input", "message": "model: needs 2 GiB"}})
    with pytest.raises(ProtocolError, match="neither"):
        _built({}, {"something": 1})
    facts = {"segment": "torpor-1-model-x", "table": {"nbytes": 64, "entries": []}, "inputs": [], "outputs": []}
    with pytest.raises(ProtocolError, match="malformed builder reply"):
        _built({}, {"built": facts})  # no input specs
    spec = [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
    with pytest.raises(ProtocolError, match="timing"):
        _built({}, {"built": {**facts, "inputs": spec, "outputs": spec, "timing": ["fast"]}})
    built = _built({"zoo": "mlp"}, {"built": {**facts, "inputs": spec, "outputs": spec, "timing": [1.0, None, 1, 1.2]}})
    assert built.image.nbytes == 64 and built.timing is not None and built.timing.heavy


def test_a_builder_reads_a_pt2_file_with_nothing_left_to_import(tmp_path: Path) -> None:
    """The fork server imports BUILDER_PRELOAD once; what building a .pt2 imports beyond it,
    every builder would import again (torch.export.load's serializer: about 1 s a deploy)."""
    import torch

    class Double(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * 2

    path = tmp_path / "d.pt2"
    torch.export.save(torch.export.export(Double(), (torch.ones(1, 4),)), str(path))
    code = (
        "import importlib, sys\n"
        "from gateway.deploy import BUILDER_PRELOAD\n"
        "for m in BUILDER_PRELOAD:\n"
        "    importlib.import_module(m)\n"
        "before = set(sys.modules)\n"
        "from shared import program\n"
        f"program.build({{'pt2': {str(path)!r}}}, meta=False)\n"
        "print(len(set(sys.modules) - before), sorted(m for m in set(sys.modules) - before if 'dynamo' in m)[:5])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    count, dynamo = out.stdout.split(" ", 1)
    assert dynamo.strip() == "[]" and int(count) < 20, f"a builder would import {out.stdout.strip()}"
