"""The repository across restarts: an unloaded .pt2 function stays unloaded and loads back bitwise
identical from its saved artifact; one whose artifact vanished is listed UNAVAILABLE with the reason."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from loadtest.server import Server, shm_segments_of
from tests.e2e.test_lifecycle import _export

pytestmark = pytest.mark.e2e


def _index(srv: Server) -> dict[str, dict[str, str]]:
    return {e["name"]: e for e in srv.client.post("/v2/repository/index").json()}


def _infer(srv: Server, name: str) -> tuple[int, dict]:
    x = np.random.default_rng(1).standard_normal((2, 16)).astype(np.float32)
    r = srv.invoke(name, [{"name": "x", "shape": [2, 16], "datatype": "FP32", "data": x.ravel().tolist()}])
    return r.status_code, r.json()


def test_unloaded_stays_unloaded_across_a_restart_and_loads_back(tmp_path: Path) -> None:
    state = tmp_path / "state"
    user_file = tmp_path / "tiny.pt2"
    _export(user_file)
    srv = Server(state, devices="cpu:1", memory="64MiB").start()
    try:
        for name in ("kept", "lost"):
            assert srv.deploy(name, {"model": {"path": str(user_file)}, "slo_ms": 100}).status_code == 201
        status, before = _infer(srv, "kept")
        assert status == 200
        assert srv.client.post("/v2/repository/models/kept/unload").status_code == 200
    finally:
        assert srv.stop() == 0, srv.log()
    artifacts = {f["name"]: f["model"]["pt2"] for f in _functions(state)}
    lost_artifact = artifacts["lost"]
    assert lost_artifact != artifacts["kept"]  # named per function
    Path(lost_artifact).rename(tmp_path / "moved.pt2")

    srv = Server(state, devices="cpu:1", memory="64MiB").start()
    try:
        index = _index(srv)
        assert index["kept"] == {"name": "kept", "version": "1", "state": "UNAVAILABLE", "reason": "unloaded"}
        assert index["lost"]["state"] == "UNAVAILABLE"
        assert index["lost"]["reason"].startswith("could not be restored: ")
        assert not any("model-" in n for n in shm_segments_of(srv.pid))  # nothing packed for either
        status, body = _infer(srv, "lost")
        assert status == 503 and "could not be restored" in body["error"]

        assert srv.client.post("/v2/repository/models/kept/load").status_code == 200
        status, after = _infer(srv, "kept")
        assert status == 200 and after == before  # bitwise: the same floats in the same JSON

        r = srv.client.post("/v2/repository/models/lost/load")  # still missing: a clear error, nothing changes
        assert r.status_code == 400 and r.json()["error"].startswith("model.path: "), r.text
        assert _index(srv)["lost"]["state"] == "UNAVAILABLE"
        Path(tmp_path / "moved.pt2").rename(lost_artifact)  # the artifact is back: a plain load restores it
        r = srv.client.post("/v2/repository/models/lost/load")
        assert r.status_code == 200, r.text
        assert _index(srv)["lost"]["state"] == "READY" and _infer(srv, "lost")[0] == 200
    finally:
        pid = srv.pid
        assert srv.stop() == 0, srv.log()
        assert shm_segments_of(pid) == []


def _functions(state: Path) -> list[dict]:
    import json

    return json.loads((state / "functions.json").read_text())["functions"]
