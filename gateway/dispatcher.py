"""Drives the scheduler with real workers: turns its decisions into frames and replies into events.

Every invocation is a future; whatever happens to its worker, the future is
resolved (result or a TorporError), so no client waits forever.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from gateway.scheduler import Decision, Evict, FunctionInfo, Reject, Run, Scheduler
from gateway.workers import WorkerPool
from shared.errors import NotFound, TorporError, Unavailable, WorkerLost
from shared.protocol import Kind

log = logging.getLogger("torpor.gateway")


@dataclass
class Outcome:
    outputs: list[dict[str, Any]]
    device: int
    source: str  # "resident", "host" or "peer:<device>"
    queue_ms: float
    swap_ms: float
    exec_ms: float


@dataclass
class Invocation:
    function: str
    inputs: list[dict[str, Any]]
    output_names: list[str]
    arrived: float = field(default_factory=time.perf_counter)
    future: asyncio.Future[Outcome] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class Dispatcher:
    def __init__(self, scheduler: Scheduler, pool: WorkerPool) -> None:
        self.scheduler = scheduler
        self.pool = pool
        self._ids = itertools.count(1)
        self._waiting: dict[int, Invocation] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    # -- called by the service ---------------------------------------------------
    async def invoke(self, inv: Invocation) -> Outcome:
        rid = next(self._ids)
        self._waiting[rid] = inv
        self.apply(self.scheduler.arrived(rid, inv.function))
        return await inv.future

    def function_added(self, info: FunctionInfo) -> None:
        self.apply(self.scheduler.function_added(info))

    def function_removed(self, name: str) -> None:
        self.apply(self.scheduler.function_removed(name))

    def device_lost(self, device: int) -> None:
        self.apply(self.scheduler.device_lost(device))

    async def drain(self) -> None:
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    # -- decisions -----------------------------------------------------------------
    def apply(self, decisions: list[Decision]) -> None:
        for d in decisions:
            if isinstance(d, Run):
                self._spawn(self._run(d))
            elif isinstance(d, Evict):
                self._spawn(self._evict(d))
            elif isinstance(d, Reject):
                inv = self._waiting.pop(d.rid, None)
                if inv is not None and not inv.future.done():
                    inv.future.set_exception(
                        NotFound(f"function {inv.function!r} was removed or replaced while the request waited")
                        if d.reason == "removed"
                        else Unavailable(d.reason)
                    )

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _evict(self, d: Evict) -> None:
        try:
            await self.pool.client(d.device).call(Kind.EVICT, {"model_id": d.model_id})
        except TorporError as exc:
            log.warning("evict %s on device %d: %s", d.model_id, d.device, exc.message)

    async def _run(self, run: Run) -> None:
        invs = [self._waiting.pop(r) for r in run.rids if r in self._waiting]
        started = time.perf_counter()
        loaded_ok = True
        try:
            client = self.pool.client(run.device)
            for model_id in run.evict:
                await client.call(Kind.EVICT, {"model_id": model_id})
            load = None
            if run.load is not None:
                body: dict[str, Any] = {"model_id": run.model_id, "offset": run.load.slice.offset}
                if run.load.peer is not None:
                    body["peer"] = {"device": run.load.peer, "offset": run.load.peer_offset}
                load = client.request(Kind.LOAD, body)
            # Sent right behind the load: the worker starts executing while the copy runs.
            infers = [
                client.request(
                    Kind.INFER,
                    {"model_id": run.model_id, "inputs": inv.inputs, "output_names": inv.output_names},
                )
                for inv in invs
            ]
            swap_ms, load_error = 0.0, None
            if load is not None:
                try:
                    swap_ms = (await load)["swap_ms"]
                except TorporError as exc:
                    loaded_ok, load_error = False, exc
            for inv, fut in zip(invs, infers, strict=True):
                try:
                    reply = await fut
                except TorporError as exc:
                    _fail(inv, load_error or exc)
                    continue
                if not inv.future.done():
                    inv.future.set_result(
                        Outcome(
                            outputs=reply["outputs"],
                            device=run.device,
                            source="resident" if run.load is None else run.load.source,
                            queue_ms=(started - inv.arrived) * 1e3,
                            swap_ms=swap_ms,
                            exec_ms=reply["exec_ms"],
                        )
                    )
        except TorporError as exc:
            for inv in invs:
                _fail(inv, exc)
            if isinstance(exc, WorkerLost):
                loaded_ok = False
        except Exception as exc:  # a bug here must not strand the requests
            log.exception("run on device %d failed", run.device)
            for inv in invs:
                _fail(inv, Unavailable(f"internal error while dispatching: {type(exc).__name__}"))
            loaded_ok = False
        finally:
            self.apply(self.scheduler.finished(run.device, loaded_ok=loaded_ok))


def _fail(inv: Invocation, exc: Exception) -> None:
    if not inv.future.done():
        inv.future.set_exception(exc)
