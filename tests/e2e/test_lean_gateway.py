"""The gateway process stays lean: no torch, no model bytes, flat private memory as functions deploy.

Models are built in short-lived builder processes that pack straight into a shared-memory
image the gateway adopts; outputs stay bitwise those of the native model.
"""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from loadtest.bench_memory import child_pids, image_bytes, maps_torch, private_bytes, settle
from loadtest.server import Server, shm_segments_of
from tests.e2e.helpers import native_output, output_array, sample_input

pytestmark = pytest.mark.e2e

MB = 1 << 20
DEPLOYS = 3
# Generous: the old in-process build grew the gateway by ~60 MB per resnet50 deploy.
GATEWAY_GROWTH_BOUND = 24 * MB
HOST_PER_MODEL_BYTE_BOUND = 1.10  # images once, plus the workers' weight-less programs


def test_deploys_leave_the_gateway_flat_and_models_on_the_host_once(tmp_path: Path) -> None:
    srv = Server(tmp_path / "state", devices="cpu:2", memory="256MiB").start()
    try:
        pids = [srv.pid, *child_pids(srv.pid)]  # workers, the builders' fork server, the resource tracker
        settle(srv.pid)
        idle = {p: private_bytes(p) for p in pids}
        model_bytes = 0
        for seed in range(DEPLOYS):
            r = srv.deploy(f"r{seed}", {"model": {"zoo": "resnet18", "seed": seed}, "slo_ms": 5000})
            assert r.status_code == 201, r.text
            model_bytes += r.json()["model_bytes"]
        # Before any request: execution's activations are working memory, not the functions' cost.
        images = image_bytes(srv)
        assert model_bytes <= images < model_bytes * 1.01
        host = images + sum(max(0, private_bytes(p) - idle[p]) for p in pids)
        assert host / model_bytes < HOST_PER_MODEL_BYTE_BOUND, f"{host / model_bytes:.3f} host bytes per model byte"
        # A deploy the builder refuses: a clear 400, nothing left behind.
        before = shm_segments_of(srv.pid)
        spec = [{"name": "x", "datatype": "INT64", "shape": [-1, 3, 224, 224]}]
        r = srv.deploy("bad", {"model": {"zoo": "resnet18"}, "slo_ms": 5000, "input_spec": spec})
        assert r.status_code == 400 and "input_spec" in r.json()["error"], r.text
        assert shm_segments_of(srv.pid) == before
        inputs = sample_input("resnet18")
        for seed in range(DEPLOYS):
            r = srv.invoke(f"r{seed}", inputs)
            assert r.status_code == 200, r.text
            assert np.array_equal(output_array(r.json()), native_output("resnet18", inputs, seed))
        assert not maps_torch(srv.pid), "the gateway process loaded torch"
        growth = private_bytes(srv.pid) - idle[srv.pid]
        assert growth < GATEWAY_GROWTH_BOUND, f"gateway private memory grew {growth / MB:.1f} MB over {DEPLOYS} deploys"
    finally:
        pid = srv.pid
        assert srv.stop() == 0, srv.log()
    assert shm_segments_of(pid) == [], "shared memory left behind after shutdown"


def _children(pid: int) -> dict[int, bytes]:
    """Child pid -> command line."""
    out: dict[int, bytes] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            try:
                out[int(child)] = Path(f"/proc/{child}/cmdline").read_bytes()
            except FileNotFoundError:
                pass  # exited meanwhile
    return out


def _builders(gateway: int) -> set[int]:
    """Builders fork from multiprocessing's fork server, a child of the gateway."""
    servers = [pid for pid, cmd in _children(gateway).items() if b"forkserver" in cmd]
    return {b for s in servers for b in _children(s)}


def test_a_builder_that_dies_fails_its_deploy_cleanly(tmp_path: Path) -> None:
    srv = Server(tmp_path / "state", devices="cpu:1", memory="512MiB").start()
    try:
        with ThreadPoolExecutor(1) as pool:
            deploying = pool.submit(srv.deploy, "bert", {"model": {"zoo": "bert-base"}, "slo_ms": 5000})
            deadline = time.monotonic() + 60
            builders: set[int] = set()
            while not builders and time.monotonic() < deadline and not deploying.done():
                builders = _builders(srv.pid)
                time.sleep(0.02)
            assert builders, "no builder process appeared"
            for pid in builders:
                os.kill(pid, signal.SIGKILL)
            r = deploying.result(timeout=60)
        assert r.status_code == 503 and "builder exited" in r.json()["error"], r.text
        assert [n for n in shm_segments_of(srv.pid) if "-model-" in n] == []
        assert srv.client.get("/v1/functions/bert").status_code == 404
        r = srv.deploy("mlp", {"model": {"zoo": "mlp"}, "slo_ms": 5000})  # the next deploy works
        assert r.status_code == 201, r.text
    finally:
        pid = srv.pid
        assert srv.stop() == 0, srv.log()
    assert shm_segments_of(pid) == []
