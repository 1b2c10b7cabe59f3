"""A live pipeline-parallel cold start (`--split on`): two CPU devices each load one stage's share at
once, the request runs across them as a pipeline, and the model is consolidated onto one device."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from loadtest.server import Server

pytestmark = pytest.mark.e2e

ROWS, DIM = 24576, 1024  # 96 MiB per table: a lookup reads a few rows, so the copy is the cold start


class Tables(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(5)
        self.a = torch.nn.Embedding(ROWS, DIM)
        self.b = torch.nn.Embedding(ROWS, DIM)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.a(ids) * 2.0 + self.b(ids)


def test_a_cold_start_split_over_two_devices_answers_bitwise_and_leaves_one_copy(tmp_path: Path) -> None:
    model = Tables().eval()
    ids = torch.tensor([[3, 1000, 24000, 7, 512, 9, 20000, 1]])
    path = tmp_path / "tables.pt2"
    torch.export.save(torch.export.export(model, (ids,)), str(path))
    with torch.inference_mode():
        want = model(ids).numpy()
    # 200 MiB devices: two resnet50s (98 MiB each) take one each, so the 192 MiB tables fit on
    # neither without an eviction -- its first request is a cold start -- while a 96 MiB share
    # fits beside the other resnet50.
    srv = Server(tmp_path / "state", "--split", "on", memory="200MiB").start()
    try:
        for name, seed in (("r1", 1), ("r2", 2)):
            assert srv.deploy(name, {"model": {"zoo": "resnet50", "seed": seed}, "slo_ms": 5000}).status_code == 201
        # An SLO no single device meets: the split is the faster cold start.
        r = srv.deploy("tables", {"model": {"path": str(path)}, "slo_ms": 5})
        assert r.status_code == 201, r.text
        _wait(lambda: sorted(len(d["resident"]) for d in _devices(srv)) == [1, 1], "the resnet50s resident")
        body = [{"name": "ids", "shape": [1, 8], "datatype": "INT64", "data": ids.ravel().tolist()}]

        r = srv.invoke("tables", body)
        assert r.status_code == 200, r.text
        assert r.headers["x-torpor-source"] in ("split:0,1", "split:1,0"), r.headers
        assert _output(r.json()).tobytes() == want.tobytes()

        # Consolidated: the whole model on the first device, the other stage's share evicted there.
        first = int(r.headers["x-torpor-source"].split(":")[1].split(",")[0])
        _wait(lambda: _holders(srv) == [first], "consolidation onto one device")
        again = srv.invoke("tables", body)
        assert again.status_code == 200 and again.headers["x-torpor-source"] == "resident", again.headers
        assert again.headers["x-torpor-device"] == str(first)
        assert _output(again.json()).tobytes() == want.tobytes()
        whole = [m for d in _devices(srv) for m in d["worker_resident"] if m["model_id"].startswith("tables@")]
        assert [m["bytes"] for m in whole] == [192 << 20]
    finally:
        assert srv.stop(signal.SIGINT) == 0, srv.log()


def _devices(srv: Server) -> list[dict]:
    return srv.client.get("/v1/devices").json()["devices"]


def _holders(srv: Server) -> list[int]:
    """Devices whose worker holds any of the tables model (a share or the whole)."""
    return [
        d["device"] for d in _devices(srv) if any(m["model_id"].startswith("tables@") for m in d["worker_resident"])
    ]


def _wait(done, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _output(body: dict) -> np.ndarray:
    (out,) = body["outputs"]
    return np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])
