"""Host images come back from a dead server's shared memory (checked) or from their files."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
import torch

from shared import program, shm
from shared.errors import DamagedImage
from shared.imagestore import ImageStore
from shared.modelstore import ModelImage, pack

MODEL = "r18@1"


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


@pytest.fixture
def store(tmp_path: Path):
    """A state dir whose image file was saved by a server (pid `dead`) that has since died."""
    dead = _dead_pid()
    gm = program.build({"zoo": "resnet18", "seed": 1}, meta=False)
    with torch.inference_mode():
        image = pack(program.packing_order(gm), ImageStore(tmp_path, dead).segment(MODEL))
    ImageStore(tmp_path, dead).save(MODEL, image)
    seg = shm.attach(image.segment_name, writable=False)
    original = bytes(seg.buf[: image.nbytes])
    seg.close()
    new = ImageStore(tmp_path)
    yield new, image, original
    image.unlink()
    shm.unlink(new.segment(MODEL))


def _bytes(image: ModelImage) -> bytes:
    seg = shm.attach(image.segment_name, writable=False)
    try:
        return bytes(seg.buf[: image.nbytes])
    finally:
        seg.close()


def test_an_intact_segment_of_a_dead_server_is_adopted_by_rename(store) -> None:
    new, old_image, original = store
    got = new.bring_in(MODEL)
    assert got.how == "adopted"
    assert got.image.segment_name == new.segment(MODEL)
    assert old_image.segment_name not in shm.listing()  # taken over, not copied
    assert _bytes(got.image) == original and got.image.table == old_image.table


def test_a_damaged_segment_is_dropped_and_the_file_read_instead(store) -> None:
    new, old_image, original = store
    seg = shm.attach(old_image.segment_name, writable=True)
    seg.buf[1000] ^= 0xFF
    seg.close()
    got = new.bring_in(MODEL)
    assert got.how == "read"
    assert old_image.segment_name not in shm.listing()
    assert _bytes(got.image) == original


def test_without_a_segment_the_file_is_read(store) -> None:
    new, old_image, original = store
    old_image.unlink()
    got = new.bring_in(MODEL)
    assert got.how == "read" and _bytes(got.image) == original


def test_a_live_servers_segment_is_never_taken(store, tmp_path: Path) -> None:
    new, old_image, _ = store
    old_image.unlink()
    live = ModelImage(new.segment(MODEL, owner=1), old_image.table)  # pid 1 is alive
    shm.create(live.segment_name, old_image.nbytes).close()
    try:
        assert new.bring_in(MODEL).how == "read"
        assert live.segment_name in shm.listing()
    finally:
        live.unlink()


def test_a_damaged_file_is_refused_and_leaves_no_segment(store) -> None:
    new, old_image, _ = store
    old_image.unlink()
    path = new.path(MODEL)
    raw = bytearray(path.read_bytes())
    raw[-5] ^= 0xFF
    path.write_bytes(raw)
    with pytest.raises(DamagedImage, match="fails its checksum"):
        new.bring_in(MODEL)
    assert new.segment(MODEL) not in shm.listing()


def test_a_file_of_another_model_is_refused(store) -> None:
    new, _, _ = store
    new.path(MODEL).rename(new.path("other@1"))
    with pytest.raises(DamagedImage, match="holds model 'r18@1', expected 'other@1'"):
        new.bring_in("other@1")


def test_another_state_dirs_images_are_neither_adopted_nor_reclaimed_early(store, tmp_path: Path) -> None:
    new, old_image, _ = store
    other = ImageStore(tmp_path / "elsewhere")
    assert other.tag != new.tag
    # A server on another state dir finds nothing of its own to adopt, and spares these for their owner.
    assert other._orphans(MODEL) == []
    assert other.spare(old_image.segment_name) and not new.spare(old_image.segment_name)
    assert not other.spare("torpor-1-arena0")  # only model images are ever spared


def test_a_killed_server_not_yet_reaped_counts_as_gone() -> None:
    proc = subprocess.Popen(["sleep", "30"])
    try:
        assert shm.alive(proc.pid)
        proc.kill()
        for _ in range(100):  # the kill lands; nobody has waited for it yet: a zombie
            with open(f"/proc/{proc.pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    break
            time.sleep(0.01)
        assert not shm.alive(proc.pid)
    finally:
        proc.wait()
