"""A real worker process fed malformed frames: it answers what it can and never wedges.

Undecodable payloads and unknown kinds get an ERROR reply and the worker keeps
serving; a frame header over the limit loses the framing, so the worker closes the
connection and exits cleanly.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass

import msgpack
import pytest

import gpuworker.main
from gpuworker.config import WorkerConfig
from shared import shm
from shared.protocol import (
    HEADER,
    MAX_FRAME_BYTES,
    Error,
    Evicted,
    Frame,
    Infer,
    Kind,
    Ready,
    Stats,
    StatsReply,
    TensorMeta,
    encode,
    recv_frame,
)

pytestmark = pytest.mark.e2e

ARENA_BYTES = 16 << 20
START_TIMEOUT_S = 60.0  # spawn + importing torch
REPLY_TIMEOUT_S = 10.0
EXIT_TIMEOUT_S = 5.0


@dataclass
class Worker:
    proc: multiprocessing.process.BaseProcess
    sock: socket.socket
    ready: Frame

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv(self) -> Frame | None:
        return recv_frame(self.sock)


def _connect(path: str, proc: multiprocessing.process.BaseProcess) -> socket.socket:
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if not proc.is_alive():
            pytest.fail(f"worker died before listening (exit code {proc.exitcode})")
        if os.path.exists(path):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(path)
                return sock
            except OSError:  # bound but not yet listening
                sock.close()
        if time.monotonic() > deadline:
            pytest.fail(f"worker did not listen on {path} within {START_TIMEOUT_S:.0f} s")
        time.sleep(0.05)


@pytest.fixture
def worker() -> Iterator[Worker]:
    arena = shm.segment_name("fuzz-arena")
    shm.create(arena, ARENA_BYTES).close()
    rundir = tempfile.mkdtemp(prefix="torpor-fz-")  # short: AF_UNIX paths are limited to 108 bytes
    path = os.path.join(rundir, "w.sock")
    cfg = WorkerConfig(
        device=0,
        kind="cpu",
        ordinal=0,
        budget=ARENA_BYTES,
        socket_path=path,
        arena_segment=arena,
        peer_segments=(),
        compute_threads=1,
        group_bytes=2 << 20,
        log_level="warning",
    )
    proc = multiprocessing.get_context("spawn").Process(target=gpuworker.main.run, args=(cfg,), daemon=True)
    sock: socket.socket | None = None
    try:
        proc.start()
        sock = _connect(path, proc)
        sock.settimeout(START_TIMEOUT_S)
        ready = recv_frame(sock)
        assert ready is not None and ready.kind is Kind.READY, ready
        sock.settimeout(REPLY_TIMEOUT_S)  # a wedged worker fails the test instead of hanging it
        yield Worker(proc, sock, ready)
    finally:
        if sock is not None:
            sock.close()
        if proc.is_alive():
            proc.terminate()
            proc.join(EXIT_TIMEOUT_S)
        if proc.is_alive():
            proc.kill()
            proc.join(EXIT_TIMEOUT_S)
        proc.close()
        shm.unlink(arena)
        shutil.rmtree(rundir, ignore_errors=True)


def _expect_error(frame: Frame | None, rid: int, contains: str, kind: str = "protocol_error") -> None:
    assert frame is not None, "the worker closed the connection instead of answering"
    assert frame.kind is Kind.ERROR, frame
    assert frame.rid == rid
    assert isinstance(frame.body, Error) and frame.body.kind == kind, frame.body
    assert contains in frame.body.message, frame.body


def _expect_stats(worker: Worker, rid: int) -> None:
    worker.send(encode(Stats(), rid))
    frame = worker.recv()
    assert frame is not None and frame.kind is Kind.STATS_REPLY and frame.rid == rid, frame
    assert isinstance(frame.body, StatsReply) and frame.body.resident == [] and frame.body.prepared == 0


def _raw_frame(header: object, buffers: bytes = b"") -> bytes:
    packed = msgpack.packb(header, use_bin_type=True)
    return HEADER.pack(HEADER.size + len(packed) + len(buffers)) + HEADER.pack(len(packed)) + packed + buffers


def test_worker_survives_malformed_frames_and_exits_on_lost_framing(worker: Worker) -> None:
    assert isinstance(worker.ready.body, Ready)
    assert worker.ready.body.device == 0 and worker.ready.body.pid == worker.proc.pid
    assert worker.ready.body.kind == "cpu" and worker.ready.body.budget == ARENA_BYTES
    assert worker.ready.body.link_gbps["host"] > 0  # measured by the worker at start

    # Garbage header, correctly length-prefixed (0xc1 is never valid msgpack).
    garbage = b"\xc1\xff\x00garbage"
    worker.send(HEADER.pack(HEADER.size + len(garbage)) + HEADER.pack(len(garbage)) + garbage)
    _expect_error(worker.recv(), 0, "undecodable")
    _expect_stats(worker, 1)  # still serving

    # A well-formed frame of an unknown kind number: answered to its request id.
    unknown = 99
    assert unknown not in {k.value for k in Kind}
    worker.send(_raw_frame([unknown, 2, {}, []]))
    _expect_error(worker.recv(), 2, f"unknown frame kind {unknown}")
    _expect_stats(worker, 3)

    # A LOAD without its fields, and one with a field of the wrong type: the error names the field.
    worker.send(_raw_frame([int(Kind.LOAD), 4, {}, []]))
    _expect_error(worker.recv(), 4, "missing required field `model_id`")
    worker.send(_raw_frame([int(Kind.LOAD), 5, {"model_id": "m", "offset": "zero"}, []]))
    _expect_error(worker.recv(), 5, "$.offset")
    # An INFER whose buffers disagree with its header: the buffers are skipped whole.
    worker.send(_raw_frame([int(Kind.INFER), 6, {"model_id": "m", "inputs": []}, [16]], b"\x00" * 8))
    _expect_error(worker.recv(), 6, "buffers of 16 bytes announced, 8 sent")
    _expect_stats(worker, 7)
    body = Infer(model_id="m", inputs=[TensorMeta(name="x", datatype="FP32", shape=[2])])
    worker.send(encode(body, 8, [b"\x00" * 8]))
    _expect_error(worker.recv(), 8, "was not prepared", kind="request_failed")
    # A reply kind sent to a worker is refused; an EVICT of nothing is a typed reply.
    worker.send(encode(Evicted(evicted=True), 9))
    _expect_error(worker.recv(), 9, "does not accept EVICTED")
    _expect_stats(worker, 10)

    # A header over the limit: framing is lost, so the worker says so, hangs up and exits.
    worker.send(HEADER.pack(MAX_FRAME_BYTES + 1))
    frames = []
    while (frame := worker.recv()) is not None:  # raises TimeoutError if the worker wedges
        frames.append(frame)
        assert len(frames) < 4, frames
    assert [(f.kind, f.rid) for f in frames] == [(Kind.ERROR, 0)]
    assert isinstance(frames[0].body, Error) and "exceeds" in frames[0].body.message
    worker.proc.join(EXIT_TIMEOUT_S)
    assert not worker.proc.is_alive(), "the worker did not exit after its connection closed"
    assert worker.proc.exitcode == 0
