"""The gateway's frame reader: frames cut out of whatever pieces the socket delivers."""

from __future__ import annotations

import pytest

from gateway.framereader import SCRATCH_BYTES, FrameReader
from shared.protocol import Frame, Inferred, Stats, TensorMeta, encode


def _feed(reader: FrameReader, data: bytes, step: int) -> None:
    """Deliver `data` as the transport would: into the reader's own buffers, `step` bytes at a time."""
    pos = 0
    while pos < len(data):
        buf = reader.get_buffer(-1)
        n = min(step, len(buf), len(data) - pos)
        assert n > 0, "the reader offered no room"
        buf[:n] = data[pos : pos + n]
        reader.buffer_updated(n)
        pos += n


def _big(rid: int, nbytes: int) -> bytes:
    meta = TensorMeta(name="out", datatype="UINT8", shape=[nbytes])
    return encode(Inferred(outputs=[meta], exec_ms=1.0, wait_ms=0.0), rid, [bytes(range(256)) * (nbytes // 256)])


@pytest.mark.parametrize("step", [1, 7, 4096, 1 << 30])
def test_small_and_large_frames_arrive_whole_in_order(step: int) -> None:
    frames: list[Frame] = []
    closed: list[str | None] = []
    reader = FrameReader(frames.append, closed.append)
    big = 3 * SCRATCH_BYTES + 256  # larger than the scratch buffer: received in place
    stream = encode(Stats(), 1) + _big(2, big) + encode(Stats(), 3) + _big(4, 512) + encode(Stats(), 5)
    _feed(reader, stream, step)
    assert [f.rid for f in frames] == [1, 2, 3, 4, 5]
    assert bytes(frames[1].buffers[0]) == bytes(range(256)) * (big // 256)
    assert bytes(frames[3].buffers[0]) == bytes(range(256)) * 2
    assert closed == []


def test_buffers_outlive_the_scratch_buffer() -> None:
    frames: list[Frame] = []
    reader = FrameReader(frames.append, lambda _: None)
    _feed(reader, _big(1, 512), 1 << 30)
    _feed(reader, _big(2, 256) + b"\xff" * 100, 1 << 30)  # later bytes overwrite the scratch
    assert bytes(frames[0].buffers[0]) == bytes(range(256)) * 2


def test_a_frame_over_the_limit_closes_the_stream_with_the_reason() -> None:
    closed: list[str | None] = []
    reader = FrameReader(lambda f: None, closed.append)
    _feed(reader, (2**31).to_bytes(4, "big") + b"\0" * 8, 1 << 30)
    assert len(closed) == 1 and closed[0] is not None and "exceeds" in closed[0]
