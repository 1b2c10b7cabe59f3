"""--host-memory: images beyond it live on disk, come in on first request (pipelined), and go back LRU."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from loadtest.server import Server, shm_segments_of
from tests.e2e.helpers import native_output, output_array, sample_input

pytestmark = pytest.mark.e2e

# resnet18 (~45 MiB) and resnet50 (~98 MiB) do not both fit in 120 MiB of host memory.
FUNCTIONS = {"r18": "resnet18", "r50": "resnet50"}
BUDGET = 120 << 20


def _invoke(srv: Server, name: str) -> str:
    zoo_name = FUNCTIONS[name]
    inputs = sample_input(zoo_name)
    r = srv.invoke(name, inputs)
    assert r.status_code == 200, r.text
    assert output_array(r.json()).tobytes() == native_output(zoo_name, inputs).tobytes()
    return r.headers["x-torpor-source"]


def _tiers(srv: Server) -> dict[str, str]:
    return {f["name"]: f["tier"] for f in srv.client.get("/v1/functions").json()["functions"]}


def _host_image_bytes(pid: int) -> int:
    return sum(os.path.getsize(f"/dev/shm/{n}") for n in shm_segments_of(pid) if "-model-" in n)


def test_images_beyond_host_memory_serve_from_disk_bitwise_equal(state_dir: Path) -> None:
    # One small device: every request of the other function evicts, so each swap shows its source.
    srv = Server(state_dir, "--host-memory", "120MiB", devices="cpu:1", memory="128MiB").start()
    try:
        for name, zoo_name in FUNCTIONS.items():
            r = srv.deploy(name, {"model": {"zoo": zoo_name}, "slo_ms": 5000})
            assert r.status_code == 201, r.text
        # r18 went onto the empty device at deploy; its host image then made room for r50's.
        assert _tiers(srv) == {"r18": "device", "r50": "host"}
        assert _host_image_bytes(srv.pid) <= BUDGET
        assert _invoke(srv, "r18") == "resident"
        assert _invoke(srv, "r50") == "host"  # r18 is evicted from the device for it
        assert _tiers(srv) == {"r18": "disk", "r50": "device"}

        assert _invoke(srv, "r18") == "disk"  # read in, copied and run group by group
        assert _tiers(srv) == {"r18": "device", "r50": "disk"}  # r50 made room
        assert _host_image_bytes(srv.pid) <= BUDGET
        assert _invoke(srv, "r18") == "resident"
        assert _invoke(srv, "r50") == "disk"
        assert _invoke(srv, "r18") == "disk"  # evicted from the device and pushed to disk meanwhile
        assert _host_image_bytes(srv.pid) <= BUDGET
    finally:
        pid = srv.pid
        assert srv.stop() == 0
    assert shm_segments_of(pid) == []

    again = Server(state_dir, "--host-memory", "120MiB", devices="cpu:1", memory="128MiB").start()
    try:
        assert "1 left on disk (--host-memory)" in again.log()
        assert sorted(_tiers(again).values()) == ["device", "disk"]  # the one in host memory went onto the device
        for name in FUNCTIONS:
            _invoke(again, name)
    finally:
        assert again.stop() == 0
