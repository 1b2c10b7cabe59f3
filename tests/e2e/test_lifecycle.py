"""A server's life: model too large, user .pt2 models, restart from --state-dir, clean shutdown."""

from __future__ import annotations

import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from loadtest.server import Server, shm_segments_of
from tests.e2e.helpers import native_output, output_array, sample_input

pytestmark = pytest.mark.e2e


class Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.a = torch.nn.Linear(16, 32)
        self.b = torch.nn.Linear(32, 4)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g))
        self.register_buffer("scale", torch.full((4,), 0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x))) * self.scale


def _export(path: Path) -> torch.nn.Module:
    model = Tiny().eval()
    batch = torch.export.Dim("batch", min=1, max=64)
    ep = torch.export.export(model, (torch.randn(2, 16),), dynamic_shapes=({0: batch},))
    torch.export.save(ep, str(path))
    return ep.module()


def test_pt2_deploy_restart_and_clean_shutdown(tmp_path: Path) -> None:
    state = tmp_path / "state"
    srv = Server(state, memory="64MiB").start()
    pid = srv.pid
    try:
        # A model bigger than a device's budget is refused, and nothing changes.
        r = srv.deploy("big", {"model": {"zoo": "resnet50"}, "slo_ms": 100})
        assert r.status_code == 400 and "needs" in r.json()["error"] and "64.0 MiB" in r.json()["error"]
        assert srv.client.get("/v1/functions").json()["functions"] == []

        user_file = tmp_path / "tiny.pt2"
        reference = _export(user_file)
        r = srv.deploy("tiny", {"model": {"path": str(user_file)}, "slo_ms": 100})
        assert r.status_code == 201, r.text
        assert r.json()["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 16]}]
        user_file.unlink()  # the server keeps its own copy of the artifact
        assert srv.deploy("m", {"model": {"zoo": "mlp", "seed": 4}, "slo_ms": 50}).status_code == 201

        x = np.random.default_rng(0).standard_normal((3, 16)).astype(np.float32)
        body = [{"name": "x", "shape": [3, 16], "datatype": "FP32", "data": x.ravel().tolist()}]
        torch.set_num_threads(1)
        want = reference(torch.from_numpy(x)).detach().numpy()
        r = srv.invoke("tiny", body)
        assert r.status_code == 200, r.text
        assert output_array(r.json()).tobytes() == want.tobytes()
        assert len(shm_segments_of(pid)) == 2 + 2  # two arenas, two model images

        # Deleting a function frees its host image.
        assert srv.client.delete("/v1/functions/m").status_code == 200
        assert len(shm_segments_of(pid)) == 3
        assert srv.deploy("m", {"model": {"zoo": "mlp", "seed": 4}, "slo_ms": 50}).status_code == 201
    finally:
        assert srv.stop(signal.SIGINT) == 0, srv.log()
    assert shm_segments_of(pid) == []

    # A new server on the same state dir brings every function back.
    srv = Server(state, memory="64MiB").start()
    try:
        names = sorted(f["name"] for f in srv.client.get("/v1/functions").json()["functions"])
        assert names == ["m", "tiny"]
        r = srv.invoke("tiny", body)
        assert r.status_code == 200 and output_array(r.json()).tobytes() == want.tobytes()
        inputs = sample_input("mlp")
        r = srv.invoke("m", inputs)
        assert r.status_code == 200
        # seed 4 differs from the seed-0 reference
        assert output_array(r.json()).tobytes() != native_output("mlp", inputs).tobytes()
    finally:
        pid = srv.pid
        assert srv.stop(signal.SIGTERM) == 0, srv.log()
    assert shm_segments_of(pid) == []
