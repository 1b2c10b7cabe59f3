"""Worker process entry point: set up the device, listen, serve frames until told to stop.

Started by the gateway with the `spawn` context and one picklable WorkerConfig.
The READY frame is sent only after the backend and arena are set up, so a
connected gateway can route work at once. The worker exits when its gateway's
connection closes, so a gateway killed with SIGKILL leaves no orphan workers.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import socket
import threading
import time
from typing import Any

from gpuworker.config import WorkerConfig
from gpuworker.heap import keep_free_heap, release_free_heap
from shared.errors import ProtocolError, TorporError
from shared.protocol import (
    BadFrame,
    Buffer,
    Bye,
    Error,
    Frame,
    FramingError,
    Kind,
    Load,
    Ready,
    Record,
    encode_parts,
    recv_frame,
    send_parts,
)

log = logging.getLogger("torpor.worker")


class Connection:
    """The gateway connection; replies may come from the main or the copy thread."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._lock = threading.Lock()

    def send(self, body: Record, rid: int, buffers: list[Buffer] | tuple[()] = ()) -> None:
        parts = encode_parts(body, rid, buffers)
        with self._lock:
            try:
                send_parts(self.sock, parts)
            except OSError:
                pass  # gateway gone; the reader sees EOF and the worker exits

    def reply(self, rid: int, result: Record | tuple[Record, list[Buffer]] | Exception) -> None:
        if isinstance(result, Exception):
            err = result if isinstance(result, TorporError) else TorporError(f"{type(result).__name__}: {result}")
            self.send(Error(kind=err.kind, message=err.message), rid)
        elif isinstance(result, tuple):
            body, buffers = result
            try:
                self.send(body, rid, buffers)
            except ProtocolError as exc:  # e.g. outputs over the frame limit
                self.reply(rid, exc)
        else:
            self.send(result, rid)


def run(cfg: WorkerConfig) -> None:
    """Module-level entry for multiprocessing (spawn)."""
    logging.basicConfig(level=cfg.log_level.upper(), format=f"%(asctime)s worker{cfg.device} %(levelname)s %(message)s")
    # Ctrl-C goes to the whole process group; the gateway decides when workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    keep_free_heap()  # before any tensor is allocated (gpuworker/heap.py)
    from gpuworker.backends import make_backend
    from gpuworker.executor import Executor

    backend = make_backend(cfg)
    backend.measure_bandwidth()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(cfg.socket_path)
    os.chmod(cfg.socket_path, 0o600)
    listener.listen(1)
    conn_sock, _ = listener.accept()
    listener.close()
    conn = Connection(conn_sock)
    executor = Executor(backend, cfg.group_bytes, conn.reply)
    conn.send(ready_body(cfg, backend), 0)
    work: queue.SimpleQueue[Frame | None] = queue.SimpleQueue()  # C: one cheap handoff per frame
    lane = ControlLane()
    reader = threading.Thread(target=_read, args=(conn, executor, work, lane), name="reader", daemon=True)
    reader.start()
    try:
        _serve(conn, executor, work, lane)
    finally:
        executor.close()
        backend.close()
        conn_sock.close()


def ready_body(cfg: WorkerConfig, backend: Any) -> Ready:
    """What this device is, as measured here: the gateway's only source of device facts.

    kind, arena budget, measured link bandwidths (``link_gbps``), and on a GPU its name,
    memory and NVML report (PCIe switches, NVLink peers and lane counts).
    """
    return Ready(
        device=cfg.device,
        kind=cfg.kind,
        ordinal=cfg.ordinal,
        pid=os.getpid(),
        budget=int(backend.arena.numel()),
        arena=backend.share_arena(),
        **backend.info(),
    )


def _read(conn: Connection, executor: Any, work: queue.SimpleQueue[Frame | None], lane: ControlLane) -> None:
    """Reads frames; answers STATS at once (so a busy device still reports), applies FILL, queues the rest."""
    # Buffered: a small frame's length, header and tensors come from one recv, not four;
    # a large tensor is still received straight into its own buffer.
    source = conn.sock.makefile("rb", buffering=64 << 10)
    while True:
        try:
            frame = recv_frame(source)
        except FramingError as exc:
            conn.reply(0, exc)  # framing is lost: no way to resync, so close
            frame = None
        except BadFrame as exc:
            conn.reply(exc.rid, exc)  # a bad payload inside a good frame: answer and go on
            continue
        except OSError:
            frame = None
        if frame is None or frame.kind is Kind.SHUTDOWN:
            work.put(frame)
            return
        if frame.kind is Kind.STATS:
            conn.reply(frame.rid, executor.stats())
        elif frame.kind is Kind.FILL:
            executor.feed(frame.body)  # here, not queued: the main thread may be waiting for these bytes
        else:
            if isinstance(frame.body, Load) and frame.body.follow is not None:
                executor.expect_feed(frame.body)  # before any FILL frame for it is read
            if frame.kind in (Kind.LOAD, Kind.EVICT) and lane.take():
                # Not behind a running inference: the copy engine brings the next model in while
                # the device executes this one (the scheduler's prefetch). Only while no other
                # control frame (PREPARE, FORGET...) waits, which a LOAD or EVICT must not overtake.
                _handle(conn, executor, frame)
                lane.release()
            elif frame.kind is Kind.INFER and lane.idle() and executor.runs_inline(frame.body):
                # The main thread has nothing queued or in hand, and the run is short: run it
                # here, saving the handoff (a wake-up of another thread) that would dominate it.
                _serve_one(conn, executor, {}, frame)
            else:
                lane.queued(control=frame.kind is not Kind.INFER)
                work.put(frame)


class ControlLane:
    """Counts the frames queued for or being handled by the main thread, so the reader handles a
    frame itself only when it overtakes none it must not: a LOAD or EVICT while no control frame
    (all but INFER) waits, a short INFER only while nothing waits at all."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting = 0  # control frames
        self._backlog = 0  # all frames; only the reader adds to it, so idle() cannot go stale under it

    def queued(self, control: bool = True) -> None:
        with self._lock:
            self._backlog += 1
            if control:
                self._waiting += 1

    def done(self, control: bool = True) -> None:
        with self._lock:
            self._backlog -= 1
            if control:
                self._waiting -= 1

    def idle(self) -> bool:
        return self._backlog == 0

    def take(self) -> bool:
        """True (and the lane is the reader's until release) if no control frame waits."""
        with self._lock:
            if self._waiting:
                return False
            self._waiting += 1
            return True

    def release(self) -> None:
        with self._lock:
            self._waiting -= 1


def _handle(conn: Connection, executor: Any, frame: Frame) -> None:
    """A LOAD or EVICT on the reader's thread."""
    try:
        if isinstance(frame.body, Load):
            executor.load(frame.rid, frame.body)  # replies from the copy thread
        else:
            conn.reply(frame.rid, executor.evict(frame.body))
    except Exception as exc:  # one frame's failure must not end the reader
        conn.reply(frame.rid, exc)


def _serve(conn: Connection, executor: Any, work: queue.SimpleQueue[Frame | None], lane: ControlLane) -> None:
    handlers = {
        Kind.PREPARE: executor.prepare,
        Kind.EVICT: executor.evict,
        Kind.FORGET: executor.forget,
        Kind.RELEASE_HOST: executor.release_host,
        Kind.PEERS: executor.peers,
    }
    while (frame := work.get()) is not None:
        if frame.kind is Kind.SHUTDOWN:
            conn.reply(frame.rid, Bye())
            return
        try:
            _serve_one(conn, executor, handlers, frame)
        finally:
            lane.done(control=frame.kind is not Kind.INFER)
        if frame.kind in (Kind.PREPARE, Kind.FORGET):
            release_free_heap()  # after building a program or dropping one: rare, and worth megabytes


def _serve_one(conn: Connection, executor: Any, handlers: dict[Kind, Any], frame: Frame) -> None:
    try:
        if isinstance(frame.body, Load):
            executor.load(frame.rid, frame.body)  # replies from the copy thread
            return
        handler = executor.infer if frame.kind is Kind.INFER else handlers.get(frame.kind)
        if handler is None:
            raise ProtocolError(f"a worker does not accept {frame.kind.name} frames")
        executor.busy_since = started = time.monotonic()
        try:
            result = handler(frame.body, frame.buffers) if frame.kind is Kind.INFER else handler(frame.body)
        finally:
            executor.busy_since = None
        if log.isEnabledFor(logging.DEBUG):  # not even the arguments are built otherwise
            log.debug("%s %d took %.2f ms", frame.kind.name, frame.rid, (time.monotonic() - started) * 1e3)
        conn.reply(frame.rid, result)
    except Exception as exc:  # one request's failure must not end the worker
        conn.reply(frame.rid, exc)
