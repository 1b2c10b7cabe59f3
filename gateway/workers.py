"""Worker processes and the gateway's asyncio clients to them.

A `WorkerClient` owns one Unix-socket connection: requests get increasing ids,
replies resolve their futures, and when the connection ends every pending
future fails with WorkerLost. A `WorkerPool` starts one process per device
(spawn context), owns the CPU arenas' shared memory and the private runtime dir.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway import devicefacts
from gateway.devicefacts import DeviceFacts
from gateway.framereader import FrameReader
from gpuworker.config import WorkerConfig
from shared import shm
from shared.config import DeviceSpec, ServeConfig
from shared.errors import ProtocolError, TorporError, WorkerLost, from_wire
from shared.protocol import (
    KIND_OF,
    REPLY,
    Buffer,
    Error,
    Frame,
    Kind,
    Peers,
    Ready,
    Record,
    Shutdown,
    Stats,
    encode_parts,
)

log = logging.getLogger("torpor.gateway")

OnReply = Callable[[Frame], None]

START_TIMEOUT_S = 120.0
STOP_GRACE_S = 10.0


class WorkerClient:
    def __init__(self, device: int) -> None:
        self.device = device
        self.reader = FrameReader(self._on_frame, self._on_close)
        self._next = 1
        # rid -> (future, reply kind, on_reply)
        self._pending: dict[int, tuple[asyncio.Future[Frame], Kind, OnReply | None]] = {}
        self.ready: Ready | None = None
        self.facts: DeviceFacts | None = None  # what the worker measured, checked (from READY)
        loop = asyncio.get_running_loop()
        self.closed = loop.create_future()
        self._first: asyncio.Future[Frame | None] = loop.create_future()  # READY, or None if it never came

    @property
    def _transport(self) -> asyncio.Transport:
        assert self.reader.transport is not None
        return self.reader.transport

    async def start(self) -> None:
        frame = await self._first
        if frame is None or not isinstance(frame.body, Ready):
            self._fail_all(WorkerLost(f"worker {self.device} did not report READY"))
            raise WorkerLost(f"worker {self.device} did not report READY")
        self.ready = frame.body
        try:
            self.facts = devicefacts.from_ready(frame.body)
        except ProtocolError as exc:
            self._fail_all(WorkerLost(f"worker {self.device} sent a malformed READY"))
            raise WorkerLost(f"worker {self.device} sent a malformed READY: {exc.message}") from exc

    def request(
        self, body: Record, buffers: Sequence[Buffer] = (), on_reply: OnReply | None = None
    ) -> asyncio.Future[Frame]:
        """Send a frame now; the returned future resolves with the reply frame (typed body, buffers).

        `on_reply` is called with a successful reply as it is read, before the future resolves: a
        client waiting for it is answered in this loop turn, not after the awaiting task's turn.
        """
        fut: asyncio.Future[Frame] = asyncio.get_running_loop().create_future()
        if self.closed.done():
            fut.set_exception(WorkerLost(f"worker {self.device} is not running"))
            return fut
        try:
            parts = encode_parts(body, self._next, buffers)
        except TorporError as exc:  # e.g. tensors over the frame limit: this request fails, nothing is sent
            fut.set_exception(exc)
            return fut
        rid, self._next = self._next, self._next + 1
        self._pending[rid] = (fut, REPLY[KIND_OF[type(body)]], on_reply)
        # One gathered write (uvloop's writelines is a writev): the worker wakes once per frame,
        # and a tensor the socket takes at once is sent from where it lies, not joined first.
        self._transport.writelines(parts)
        return fut

    def send(self, body: Record) -> None:
        """A one-way frame (FILL): nothing waits for a reply; dropped if the worker is gone."""
        if not self.closed.done():
            self._transport.writelines(encode_parts(body, 0))

    async def call(self, body: Record, timeout: float | None = None) -> Any:
        """Send a request and wait for its reply's body."""
        frame = await asyncio.wait_for(self.request(body), timeout)
        return frame.body

    def _on_frame(self, frame: Frame) -> None:
        if not self._first.done():
            self._first.set_result(frame)
            return
        fut, expected, on_reply = self._pending.pop(frame.rid, (None, None, None))
        if fut is None or fut.done():
            if isinstance(frame.body, Error):
                log.warning("worker %d: %s", self.device, frame.body.message)
            return
        if isinstance(frame.body, Error):
            fut.set_exception(from_wire({"kind": frame.body.kind, "message": frame.body.message}))
        elif frame.kind is expected:
            if on_reply is not None:
                try:
                    on_reply(frame)
                except Exception:  # the awaiting task still gets the frame and answers it
                    log.exception("worker %d: reply callback failed", self.device)
            fut.set_result(frame)
        else:
            fut.set_exception(ProtocolError(f"unexpected {frame.kind.name} reply, expected {expected}"))

    def _on_close(self, malformed: str | None) -> None:
        if not self._first.done():
            self._first.set_result(None)
        if malformed is None:
            reason = f"worker {self.device} closed its connection"
        else:
            reason = f"worker {self.device} sent a malformed frame: {malformed}"
        self._fail_all(WorkerLost(reason))

    def _fail_all(self, exc: TorporError) -> None:
        pending, self._pending = self._pending, {}
        for fut, _, _ in pending.values():
            if not fut.done():
                fut.set_exception(exc)
        if not self.closed.done():
            self.closed.set_result(exc.message)
        if self.reader.transport is not None:
            self.reader.transport.close()

    async def close(self) -> None:
        self._fail_all(WorkerLost(f"worker {self.device} is shutting down"))


@dataclass
class WorkerHandle:
    spec: DeviceSpec
    config: WorkerConfig
    process: multiprocessing.process.BaseProcess
    client: WorkerClient | None = None
    started: float = field(default_factory=time.time)
    monitor: asyncio.Task[None] | None = None


class WorkerPool:
    """Starts, watches and stops one worker process per device."""

    def __init__(self, cfg: ServeConfig, budget: int | None, on_lost: Callable[[int, str], None]) -> None:
        self.cfg = cfg
        self.budget = budget  # None: each GPU worker sizes its arena from its free memory
        self.facts: dict[int, DeviceFacts] = {}  # per device, from READY and the PEERS reply
        self.on_lost = on_lost
        self.runtime_dir = tempfile.mkdtemp(prefix="torpor-run-")
        os.chmod(self.runtime_dir, 0o700)  # sockets inside are the service user's alone
        self.arenas: dict[int, str] = {}
        self.handles: dict[int, WorkerHandle] = {}
        self._ctx = multiprocessing.get_context("spawn")

    def _worker_config(self, index: int, spec: DeviceSpec) -> WorkerConfig:
        peers = tuple((i, n) for i, n in self.arenas.items() if i != index)
        return WorkerConfig(
            device=index,
            kind=spec.kind,
            ordinal=spec.index,
            # A restarted worker keeps the arena size the scheduler already plans with.
            budget=self.facts[index].budget if index in self.facts else self.budget,
            socket_path=os.path.join(self.runtime_dir, f"worker{index}.sock"),
            arena_segment=self.arenas.get(index),
            peer_segments=peers,
            compute_threads=self.cfg.threads_per_device,
            group_bytes=self.cfg.swap_group_bytes,
            log_level=self.cfg.log_level,
        )

    async def start_all(self) -> None:
        for i, spec in enumerate(self.cfg.devices):
            if spec.kind == "cpu":
                assert self.budget is not None, "CPU devices need a budget: their arena is created here"
                name = shm.segment_name(f"arena{i}")
                shm.create(name, self.budget).close()
                self.arenas[i] = name
        # Let every start finish (or fail) before raising, so a stop after a failure reaps them all.
        results = await asyncio.gather(*(self.start(i) for i in range(len(self.cfg.devices))), return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            raise failed[0]
        await self.exchange_peers()

    async def exchange_peers(self) -> None:
        """Give every worker the others' arena handles (CUDA IPC; CPU arenas are named segments)."""
        handles = {
            str(i): h.client.ready.arena
            for i, h in self.handles.items()
            if h.client is not None and h.client.ready is not None and h.client.ready.arena is not None
        }
        for i, h in self.handles.items():
            if h.client is not None:
                reply = await h.client.call(Peers(handles={k: v for k, v in handles.items() if k != str(i)}))
                # Peer bandwidths are measured once the peers' arenas are open.
                self.facts[i] = devicefacts.with_peers(self.facts[i], reply.link_gbps)

    async def start(self, index: int) -> WorkerClient:
        from gpuworker.main import run

        spec = self.cfg.devices[index]
        wcfg = self._worker_config(index, spec)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(wcfg.socket_path)
        proc = self._ctx.Process(target=run, args=(wcfg,), name=f"torpor-worker{index}", daemon=False)
        proc.start()
        handle = WorkerHandle(spec, wcfg, proc)
        self.handles[index] = handle
        client = await self._connect(handle)
        handle.client = client
        assert client.facts is not None
        self.facts[index] = client.facts
        loop = asyncio.get_running_loop()
        # The sentinel becomes readable when the process exits: notice a crash at once.
        loop.add_reader(proc.sentinel, self._exited, index, proc)
        client.closed.add_done_callback(lambda f, i=index, p=proc: self._client_closed(i, p, f.result()))
        handle.monitor = asyncio.create_task(self._watch(handle), name=f"worker{index}-heartbeat")
        log.info("worker %d (%s) ready, pid %d", index, spec.label, proc.pid)
        return client

    async def _connect(self, handle: WorkerHandle) -> WorkerClient:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if not handle.process.is_alive():
                handle.process.join(0)  # reap it
                raise WorkerLost(f"worker {handle.config.device} exited during start (code {handle.process.exitcode})")
            client = WorkerClient(handle.config.device)
            try:
                await asyncio.get_running_loop().create_unix_connection(
                    lambda c=client: c.reader, handle.config.socket_path
                )
            except (FileNotFoundError, ConnectionRefusedError):
                await asyncio.sleep(0.05)
                continue
            try:
                await asyncio.wait_for(client.start(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                client._fail_all(WorkerLost(f"worker {handle.config.device} did not report READY"))
                break
            return client
        raise WorkerLost(f"worker {handle.config.device} did not start within {START_TIMEOUT_S:.0f} s")

    async def _watch(self, handle: WorkerHandle) -> None:
        """Heartbeat: a worker that stops answering STATS, or sits in one frame too long, is hung.

        STATS is answered by the worker's reader thread even while a model runs, so a
        long inference is not mistaken for a hang; `exec_timeout_s` catches one that
        never ends. A hung worker is killed; its sentinel then starts the usual recovery.
        """
        client = handle.client
        assert client is not None
        while not client.closed.done():
            await asyncio.sleep(self.cfg.heartbeat_s)
            if client.closed.done():
                return
            try:
                stats = await client.call(Stats(), timeout=self.cfg.hang_timeout_s)
                hung = stats.busy_for_s > self.cfg.exec_timeout_s
                why = f"one operation has run for {stats.busy_for_s:.0f} s"
            except TimeoutError:
                hung, why = True, f"no heartbeat answer within {self.cfg.hang_timeout_s:g} s"
            except TorporError:
                return  # the connection ended; recovery is already under way
            if hung:
                log.error("worker %d is hung (%s); killing it", client.device, why)
                handle.process.kill()
                return

    def _exited(self, index: int, proc: multiprocessing.process.BaseProcess) -> None:
        asyncio.get_running_loop().remove_reader(proc.sentinel)
        proc.join(0)
        handle = self.handles.get(index)
        if handle is not None and handle.process is proc and handle.client is not None:
            handle.client._fail_all(WorkerLost(f"worker {index} exited (code {proc.exitcode})"))

    def _client_closed(self, index: int, proc: multiprocessing.process.BaseProcess, reason: str) -> None:
        handle = self.handles.get(index)
        if handle is not None and handle.process is proc and not self._stopping:
            self.on_lost(index, reason)

    _stopping = False

    def client(self, index: int) -> WorkerClient:
        handle = self.handles.get(index)
        if handle is None or handle.client is None:
            raise WorkerLost(f"worker {index} is not running")
        return handle.client

    def live_clients(self) -> list[WorkerClient]:
        return [h.client for h in self.handles.values() if h.client is not None and not h.client.closed.done()]

    async def broadcast(self, body: Record, timeout: float | None = None) -> list[Any]:
        return await asyncio.gather(*(c.call(body, timeout) for c in self.live_clients()), return_exceptions=True)

    async def stop_all(self) -> None:
        self._stopping = True
        handles = list(self.handles.values())
        for h in handles:
            if h.client is not None and not h.client.closed.done():
                h.client.request(Shutdown())
        await asyncio.gather(*(self._reap(h) for h in handles))
        for name in self.arenas.values():
            shm.unlink(name)
        shutil.rmtree(self.runtime_dir, ignore_errors=True)

    async def _reap(self, h: WorkerHandle) -> None:
        proc = h.process
        if h.monitor is not None:
            h.monitor.cancel()
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_reader(proc.sentinel)
        deadline = time.monotonic() + STOP_GRACE_S
        # A process exit has no awaitable here (its sentinel reader is gone): poll briefly.
        while proc.is_alive() and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        if proc.is_alive():
            proc.terminate()  # SIGTERM, then SIGKILL after a grace period
            await asyncio.to_thread(proc.join, 3)
        if proc.is_alive():
            proc.kill()
            await asyncio.to_thread(proc.join, 3)
        if h.client is not None:
            await h.client.close()
