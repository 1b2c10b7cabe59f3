"""The worker's reader thread runs a short INFER itself only when it overtakes nothing.

The real `gpuworker.main._read` over a socket pair, with an executor that says every
INFER is short: with the main thread idle the reader answers the INFER itself; behind
a control frame still waiting for the main thread (or an INFER it has in hand), the
INFER is queued after it, so the worker's order of operations is the gateway's.
"""

from __future__ import annotations

import queue
import socket
import threading

from gpuworker.main import Connection, ControlLane, _read
from shared.protocol import Forget, Frame, Infer, Inferred, Kind, Shutdown, TensorMeta, encode, recv_frame

TIMEOUT_S = 5.0


class ShortRuns:
    """An executor whose every INFER is short and resident."""

    def __init__(self) -> None:
        self.ran: list[str] = []

    def runs_inline(self, body: Infer) -> bool:
        return True

    def infer(self, body: Infer, buffers: list[memoryview]) -> tuple[Inferred, list[bytes]]:
        self.ran.append(threading.current_thread().name)
        return Inferred(outputs=[TensorMeta(name="y", datatype="FP32", shape=[1])], exec_ms=0.01, wait_ms=0.0), [
            bytes(4)
        ]


def _infer(rid: int) -> bytes:
    meta = TensorMeta(name="x", datatype="FP32", shape=[1])
    return encode(Infer(model_id="m", inputs=[meta], output_names=["y"]), rid, [bytes(4)])


def _read_stream(stream: bytes, lane: ControlLane) -> tuple[list[Frame | None], list[Frame], ShortRuns]:
    """Run the reader over `stream` (no main thread: queued frames stay queued); (queued, replies, executor)."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    a.settimeout(TIMEOUT_S)
    work: queue.SimpleQueue[Frame | None] = queue.SimpleQueue()
    executor = ShortRuns()
    with a, b:
        reader = threading.Thread(target=_read, args=(Connection(b), executor, work, lane), name="reader")
        reader.start()
        a.sendall(stream + encode(Shutdown(), 99))
        reader.join(TIMEOUT_S)
        assert not reader.is_alive()
        b.shutdown(socket.SHUT_WR)
        replies = []
        while (frame := recv_frame(a)) is not None:
            replies.append(frame)
    queued = []
    while not work.empty():
        queued.append(work.get_nowait())
    return queued, replies, executor


def test_a_short_infer_runs_on_the_reader_when_the_main_thread_is_idle() -> None:
    queued, replies, executor = _read_stream(_infer(1) + _infer(2), ControlLane())
    assert [(r.kind, r.rid) for r in replies] == [(Kind.INFERRED, 1), (Kind.INFERRED, 2)]
    assert executor.ran == ["reader", "reader"]
    assert [f.kind for f in queued if f is not None] == [Kind.SHUTDOWN]


def test_an_infer_behind_a_waiting_control_frame_is_queued_after_it() -> None:
    lane = ControlLane()
    queued, replies, executor = _read_stream(encode(Forget(model_id="m"), 1) + _infer(2), lane)
    assert replies == [] and executor.ran == []
    assert [(f.kind, f.rid) for f in queued if f is not None] == [
        (Kind.FORGET, 1),
        (Kind.INFER, 2),
        (Kind.SHUTDOWN, 99),
    ]
    assert not lane.idle()


def test_an_infer_behind_one_the_main_thread_has_in_hand_is_queued() -> None:
    lane = ControlLane()
    lane.queued(control=False)  # the main thread is running an INFER
    queued, replies, _ = _read_stream(_infer(3), lane)
    assert replies == []
    assert [(f.kind, f.rid) for f in queued if f is not None] == [(Kind.INFER, 3), (Kind.SHUTDOWN, 99)]
    lane.done(control=False)
    lane.done(control=False)
    assert lane.idle()
