"""Image files: a packed model's bytes round-trip through disk exactly; damage is refused, named."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from shared import imagefile, program, shm, zoo
from shared.errors import DamagedImage
from shared.modelstore import pack, views


@pytest.fixture
def packed():
    gm = program.build({"zoo": "resnet18", "seed": 3}, meta=False)
    with torch.inference_mode():
        image = pack(program.packing_order(gm), shm.segment_name("test-imagefile"))
    seg = shm.attach(image.segment_name, writable=False)
    try:
        yield image, seg
    finally:
        seg.close()
        image.unlink()


def _write(tmp_path: Path, packed, chunk: int = imagefile.CHUNK_BYTES) -> Path:
    image, seg = packed
    return imagefile.write(tmp_path / "m.img", "resnet18@1", image.table, seg.buf, chunk_bytes=chunk)


def test_round_trip_into_a_segment_is_bitwise_and_reports_progress(tmp_path: Path, packed) -> None:
    image, seg = packed
    path = _write(tmp_path, packed, chunk=1 << 20)
    assert path.stat().st_size >= image.nbytes
    dest = shm.create(shm.segment_name("test-imagefile-restored"), image.nbytes)
    ready: list[int] = []
    try:
        info = imagefile.read_into(path, dest.buf, on_chunk=ready.append, expect_model="resnet18@1")
        assert info.table == image.table
        assert bytes(dest.buf[: image.nbytes]) == bytes(seg.buf[: image.nbytes])
        # Progress rises chunk by chunk to the whole image, so a consumer can start early.
        assert ready == sorted(ready) and ready[-1] == image.nbytes and len(ready) == len(info.checksums) > 10
        # The restored bytes are the model: same tensors as a fresh build.
        restored = views(torch.frombuffer(dest.buf, dtype=torch.uint8), 0, info.table)
        fresh = dict(zoo.build("resnet18", 3).state_dict())
        for name, t in fresh.items():
            assert torch.equal(restored[name], t), name
        del restored
    finally:
        dest.close()
        shm.unlink(dest.name)


def test_a_flipped_byte_is_refused_naming_its_chunk(tmp_path: Path, packed) -> None:
    image, _ = packed
    path = _write(tmp_path, packed, chunk=1 << 20)
    info = imagefile.read_info(path)
    with open(path, "r+b") as f:
        f.seek(info.data_offset + 3 * (1 << 20) + 17)
        b = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([b[0] ^ 0xFF]))
    ready: list[int] = []
    with pytest.raises(DamagedImage, match=r"chunk 3 \(bytes 3145728\.\.4194304\) fails its checksum"):
        imagefile.read_into(path, bytearray(image.nbytes), on_chunk=ready.append)
    assert ready[-1] == 3 << 20  # only the verified chunks were reported


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda p, info: p.write_bytes(b"PK\x03\x04" + p.read_bytes()[4:]), "not a torpor image file"),
        (lambda p, info: p.write_bytes(p.read_bytes()[:8]), "too short"),
        (lambda p, info: p.write_bytes(p.read_bytes()[: info.data_offset + 100]), "truncated"),
        (lambda p, info: p.write_bytes(p.read_bytes()[:20] + b"{" + p.read_bytes()[21:]), "damaged header"),
        (lambda p, info: p.unlink(), "no such image file"),
    ],
)
def test_damaged_files_are_refused_with_a_clear_error(tmp_path: Path, packed, damage, message) -> None:
    image, _ = packed
    path = _write(tmp_path, packed)
    damage(path, imagefile.read_info(path))
    with pytest.raises(DamagedImage, match=message):
        imagefile.read_into(path, bytearray(image.nbytes))


def test_a_newer_format_version_is_named(tmp_path: Path, packed) -> None:
    path = _write(tmp_path, packed)
    raw = bytearray(path.read_bytes())
    raw[8:12] = (imagefile.VERSION + 1).to_bytes(4, "little")
    path.write_bytes(raw)
    with pytest.raises(DamagedImage, match=f"format version {imagefile.VERSION + 1}"):
        imagefile.read_info(path)


def test_another_models_file_is_refused(tmp_path: Path, packed) -> None:
    image, _ = packed
    path = _write(tmp_path, packed)
    with pytest.raises(DamagedImage, match="holds model 'resnet18@1', expected 'resnet18@2'"):
        imagefile.read_into(path, bytearray(image.nbytes), expect_model="resnet18@2")


def test_verify_buffer_finds_the_first_changed_chunk(tmp_path: Path, packed) -> None:
    image, seg = packed
    info = imagefile.read_info(_write(tmp_path, packed, chunk=1 << 20))
    data = bytearray(seg.buf[: image.nbytes])
    assert imagefile.verify_buffer(info, data) is None
    data[5 << 20] ^= 1
    assert imagefile.verify_buffer(info, data) == 5


def test_a_failed_write_leaves_no_file_behind(tmp_path: Path, packed) -> None:
    image, _ = packed
    with pytest.raises(ValueError, match="shorter than its table"):
        imagefile.write(tmp_path / "m.img", "m@1", image.table, b"\0" * 10)
    assert list(tmp_path.iterdir()) == []


def _drop_cache(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def test_a_file_not_in_the_page_cache_is_read_straight_into_the_destination(tmp_path: Path, packed) -> None:
    """O_DIRECT where the file is cold and the filesystem allows it; the same bytes, the same checks."""
    image, seg = packed
    path = _write(tmp_path, packed, chunk=1 << 20)
    info = imagefile.read_info(path)
    with imagefile._Source(info, direct=True) as warm:
        assert warm.direct == -1, "a file just written is in the page cache: read through it"
    _drop_cache(path)
    with imagefile._Source(info, direct=True) as cold:
        if cold.direct == -1:
            pytest.skip(f"{tmp_path} does not allow O_DIRECT reads (or cannot tell what is cached)")
    _drop_cache(path)
    dest = shm.create(shm.segment_name("test-imagefile-direct"), image.nbytes)
    try:
        imagefile.read_into(path, dest.buf)  # a reader thread of its own: direct
        assert bytes(dest.buf[: image.nbytes]) == bytes(seg.buf[: image.nbytes])
        with open(path, "r+b") as f:  # damage read the direct way is refused as any other
            f.seek(info.data_offset + 2 * (1 << 20) + 5)
            b = f.read(1)
            f.seek(-1, os.SEEK_CUR)
            f.write(bytes([b[0] ^ 0xFF]))
        _drop_cache(path)
        with pytest.raises(DamagedImage, match=r"chunk 2 \(bytes 2097152\.\.3145728\) fails its checksum"):
            imagefile.read_into(path, dest.buf)
    finally:
        dest.close()
        shm.unlink(dest.name)
