"""A restart keeps warm memory: images a killed server left in shared memory are adopted, else read from disk."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from loadtest.server import Server, shm_segments_of
from shared.imagestore import ImageStore
from tests.e2e.helpers import native_output, output_array, sample_input

pytestmark = pytest.mark.e2e

FUNCTIONS = {"r18": "resnet18", "mlp": "mlp"}


def _outputs(srv: Server) -> dict[str, bytes]:
    out = {}
    for name, zoo_name in FUNCTIONS.items():
        inputs = sample_input(zoo_name)
        r = srv.invoke(name, inputs)
        assert r.status_code == 200, r.text
        got = output_array(r.json())
        assert got.tobytes() == native_output(zoo_name, inputs).tobytes()
        out[name] = got.tobytes()
    return out


def _kill9(srv: Server) -> None:
    os.killpg(srv.pid, signal.SIGKILL)  # the gateway and its workers, as an OOM kill or a power cut would
    srv.stop()


def test_kill9_then_restart_adopts_the_images_and_serves_bitwise_equal(state_dir: Path) -> None:
    srv = Server(state_dir).start()
    for name, zoo_name in FUNCTIONS.items():
        r = srv.deploy(name, {"model": {"zoo": zoo_name}, "slo_ms": 5000})
        assert r.status_code == 201, r.text
    before = _outputs(srv)
    dead = srv.pid
    _kill9(srv)
    left = shm_segments_of(dead)
    assert ImageStore(state_dir / "images", dead).segment("r18@1") in left, left

    again = Server(state_dir).start()
    try:
        assert "host images: 2 adopted from shared memory, 0 read from disk" in again.log()
        assert "deployed" not in again.log().split("host images:")[-1]  # nothing was rebuilt
        assert shm_segments_of(dead) == []  # adopted (renamed) or reclaimed: nothing of the dead run left
        assert _outputs(again) == before
    finally:
        pid = again.pid
        assert again.stop() == 0
    assert shm_segments_of(pid) == []

    # With shared memory gone too (a reboot), the images come from the state dir's files.
    third = Server(state_dir).start()
    try:
        assert "host images: 0 adopted from shared memory, 2 read from disk" in third.log()
        assert _outputs(third) == before
    finally:
        assert third.stop() == 0


def test_a_damaged_image_file_is_rebuilt_not_served(state_dir: Path) -> None:
    srv = Server(state_dir).start()
    r = srv.deploy("r18", {"model": {"zoo": "resnet18"}, "slo_ms": 5000})
    assert r.status_code == 201, r.text
    assert srv.stop() == 0
    path = ImageStore(state_dir / "images").path("r18@1")
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(raw)

    again = Server(state_dir).start()
    try:
        assert "image of r18 unusable" in again.log() and "fails its checksum" in again.log()
        inputs = sample_input("resnet18")
        r = again.invoke("r18", inputs)
        assert r.status_code == 200, r.text
        assert output_array(r.json()).tobytes() == native_output("resnet18", inputs).tobytes()
    finally:
        assert again.stop() == 0
    assert imagefile_ok(path)


def imagefile_ok(path: Path) -> bool:
    """The rebuilt image was saved again, whole."""
    from shared import imagefile

    info = imagefile.read_info(path)
    return imagefile.read_into(path, bytearray(info.nbytes)) is not None
