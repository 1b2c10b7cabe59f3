"""Drives the scheduler with real workers: turns its decisions into frames and replies into events.

Every invocation is a future that is always resolved -- with a result or a
TorporError -- whatever happens to its worker: a request whose worker dies is
sent once more to another device, then answered 503; a request past its
deadline is answered 504 and its queue slot released.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from gateway import batching
from gateway.hostfeed import HostFeed
from gateway.metrics import Metrics
from gateway.scheduler import Decision, Evict, FunctionInfo, Prefetch, Reject, Run, Scheduler
from gateway.workers import WorkerPool
from shared.errors import (
    DeadlineExceeded,
    DroppedLate,
    NotFound,
    Overloaded,
    RequestFailed,
    Shed,
    TorporError,
    Unavailable,
    WorkerLost,
)
from shared.protocol import Evict as EvictFrame
from shared.protocol import Frame, Infer, Load, Part, Peer, tensor_maps, tensor_meta

log = logging.getLogger("torpor.gateway")

MAX_RETRIES = 1  # inference is idempotent, so a lost request may run again, once


@dataclass
class Outcome:
    outputs: list[dict[str, Any]]
    device: int
    source: str  # "resident", "host" or "peer:<device>"
    queue_ms: float
    swap_ms: float
    exec_ms: float
    batch: int = 1  # requests executed together with this one (itself included)


@dataclass
class Invocation:
    function: str
    inputs: list[dict[str, Any]]
    output_names: list[str]
    timeout_s: float
    arrived: float = field(default_factory=time.perf_counter)
    future: asyncio.Future[Outcome] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    phase: str = "queue"  # what it waits for now: queue, swap or exec
    attempts: int = 0
    rid: int = 0


# A run's frames once sent: the LOAD's reply future (if any), and per INFER frame its requests,
# their batch sizes, its reply future and, for a resident model, what answers them as it is read.
Sent = tuple[
    "asyncio.Future[Any] | None", list[tuple[list[Invocation], list[int], "asyncio.Future[Any]", "_Early | None"]]
]


@dataclass
class Started:
    """A run taken from the scheduler: its requests, when, and its frames if already sent."""

    invs: list[Invocation]
    started: float
    sent: Sent | None = None
    error: Exception | None = None  # sending failed: answered by the run's task
    evicts: list[asyncio.Future[Any]] = field(default_factory=list)  # the EVICT frames' replies


@dataclass(frozen=True)
class Limits:
    max_queue_per_function: int = 256
    max_queued: int = 4096


class Dispatcher:
    def __init__(
        self, scheduler: Scheduler, pool: WorkerPool, limits: Limits | None = None, metrics: Metrics | None = None
    ) -> None:
        self.scheduler = scheduler
        self.pool = pool
        self.limits = limits or Limits()
        self.metrics = metrics or Metrics()
        self._ids = itertools.count(1)
        self._waiting: dict[int, Invocation] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        # Set by the service: for a swap-in of an image not whole in host memory, the disk-tier
        # file to read (its segment readied), the feed of an image arriving from another node,
        # or None once it is whole after all (see gateway.tiers.Tiers.fill_source).
        self.fill_source: Callable[[str], Awaitable[str | HostFeed | None]] = _no_disk_tier
        # Requests in the scheduler's queues: +1 on arrival, -1 when a Run takes, a Reject drops or a
        # cancel removes one; kept here so the admission check is O(1) whatever the number of functions.
        self._queued = 0

    # -- called by the service ---------------------------------------------------
    async def invoke(self, inv: Invocation) -> Outcome:
        if self.scheduler.queue_depth(inv.function) >= self.limits.max_queue_per_function:
            raise Overloaded(f"function {inv.function!r} has {self.limits.max_queue_per_function} requests waiting")
        if self._queued >= self.limits.max_queued:
            raise Overloaded(f"the server has {self.limits.max_queued} requests waiting")
        # A timer handle rather than asyncio.wait_for: no wrapper future and callbacks per request.
        timer = asyncio.get_running_loop().call_later(inv.timeout_s, self._expire, inv)
        self._submit(inv)
        try:
            return await inv.future
        finally:
            timer.cancel()

    def _expire(self, inv: Invocation) -> None:
        """The deadline passed: answer 504 now; a late reply finds the future done and is dropped."""
        if inv.future.done():
            return
        # Release the queue slot; a request already on a device finishes there, unseen.
        if self._waiting.pop(inv.rid, None) is not None and self.scheduler.cancel(inv.rid, inv.function):
            self._queued -= 1
        inv.future.set_exception(
            DeadlineExceeded(
                f"deadline of {inv.timeout_s * 1e3:.0f} ms exceeded while waiting for {_phase_text(inv.phase)}"
            )
        )

    def _submit(self, inv: Invocation) -> None:
        inv.rid = next(self._ids)
        inv.phase = "queue"
        self._waiting[inv.rid] = inv
        self._queued += 1
        self.apply(self.scheduler.arrived(inv.rid, inv.function))

    def function_added(self, info: FunctionInfo) -> None:
        self.apply(self.scheduler.function_added(info))

    def function_removed(self, name: str, reason: str = "removed") -> None:
        """`reason`: what the requests still waiting for it are told ("removed" 404, "unloaded" 503)."""
        self.apply(self.scheduler.function_removed(name, reason))

    def device_lost(self, device: int) -> None:
        self.apply(self.scheduler.device_lost(device))

    def settle(self) -> None:
        """Let the scheduler act without an event: after deploys, fill free device memory."""
        self.apply(self.scheduler.settle())

    async def drain(self) -> None:
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    # -- decisions -----------------------------------------------------------------
    def apply(self, decisions: list[Decision]) -> None:
        # Each decision's frames are sent here, in the order decided (an EVICT before the LOAD that
        # reuses its space); a task per decision awaits the replies.
        for d in decisions:
            if isinstance(d, Run) and d.shares:
                self._queued -= len(d.rids)
                self._spawn(self._split_run(d, self._take(d)))
            elif isinstance(d, Run):
                self._queued -= len(d.rids)
                self._spawn(self._run(d, self._start(d)))
            elif isinstance(d, Prefetch):
                self._spawn(self._prefetch(d, self._send_prefetch(d)))
            elif isinstance(d, Evict):
                self._spawn(self._evict(d, self._send_evict(d)))
            elif isinstance(d, Reject):
                self._queued -= 1
                inv = self._waiting.pop(d.rid, None)
                if inv is not None:
                    _fail(inv, _rejection(inv, d.reason))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _send_evict(self, d: Evict) -> asyncio.Future[Any] | TorporError:
        try:
            return self.pool.client(d.device).request(EvictFrame(model_id=d.model_id))
        except TorporError as exc:
            return exc

    async def _evict(self, d: Evict, sent: asyncio.Future[Any] | TorporError) -> None:
        if isinstance(sent, TorporError):
            log.warning("evict %s on device %d: %s", d.model_id, d.device, sent.message)
            return
        await self._evicted(d.device, [d.model_id], [sent])

    async def _evicted(self, device: int, models: list[str], replies: list[asyncio.Future[Any]]) -> None:
        """Await EVICT replies sent ahead of a LOAD. A failed one is logged, not the run's failure: a
        model the worker did not hold leaves its space free, and a lost worker fails the run's own
        frames too."""
        for model_id, reply in zip(models, replies, strict=True):
            try:
                await reply
            except TorporError as exc:
                log.warning("evict %s on device %d: %s", model_id, device, exc.message)
                continue
            self.metrics.evicted(device, model_id)

    def _send_prefetch(self, p: Prefetch) -> tuple[list[asyncio.Future[Any]], asyncio.Future[Any]] | TorporError:
        try:
            client = self.pool.client(p.device)
        except TorporError as exc:
            return exc
        evicts = [client.request(EvictFrame(model_id=m)) for m in p.evict]
        return evicts, client.request(Load(model_id=p.model_id, offset=p.load.slice.offset))

    async def _prefetch(
        self, p: Prefetch, sent: tuple[list[asyncio.Future[Any]], asyncio.Future[Any]] | TorporError
    ) -> None:
        """A model copied onto a device ahead of its request, while the device runs another.

        Its frames were sent when it was decided, so a Run the scheduler places on this model
        later reaches the worker behind the LOAD; the worker starts a LOAD at once, even while
        it executes, so the copy overlaps the running inference.
        """
        ok = False
        try:
            if isinstance(sent, TorporError):
                raise sent
            evicts, load = sent
            for model_id, evicted in zip(p.evict, evicts, strict=True):
                await evicted
                self.metrics.evicted(p.device, model_id)
            loaded = (await load).body
            self.metrics.swapped_in(p.device, p.model_id, loaded.source, loaded.bytes)
            ok = True
        except TorporError as exc:
            log.warning("prefetch of %s onto device %d: %s", p.model_id, p.device, exc.message)
        finally:
            self.apply(self.scheduler.prefetched(p.device, ok, model_id=p.model_id))

    def _start(self, run: Run) -> Started:
        """Take the run's requests and, unless something must be awaited first, send its frames now.

        Sent here, in the step that placed the run, the frames reach the worker without waiting
        for the event loop to start the run's task; evictions and a disk or remote fill source
        are awaited in the task first (`_run`).
        """
        st = self._take(run)
        try:
            # EVICTs first, not awaited: the worker handles a connection's frames in order, so the
            # LOAD behind them finds their space free, and the run does not wait two trips through
            # an event loop that may be parsing another request's body in between.
            if run.evict:
                client = self.pool.client(run.device)
                st.evicts = [client.request(EvictFrame(model_id=m)) for m in run.evict]
                for reply in st.evicts:  # awaited in _run, unless the run fails before
                    reply.add_done_callback(_retrieved)
            if run.load is None or not run.load.fill:
                st.sent = self._send(run, st.invs, None, st.started)
        except Exception as exc:  # answered in _run, as any failure of the run
            st.error = exc
        return st

    def _take(self, run: Run) -> Started:
        """The run's requests, out of the waiting ones."""
        invs = [self._waiting.pop(r) for r in run.rids if r in self._waiting]
        for inv in invs:
            inv.phase = "swap" if run.load is not None else "exec"
        return Started(invs, time.perf_counter())

    def _send(self, run: Run, invs: list[Invocation], fill: str | HostFeed | None, started: float) -> Sent:
        """Send the run's LOAD (if any) and INFER frames; their reply futures."""
        client = self.pool.client(run.device)
        load = None
        if run.load is not None:
            if isinstance(fill, HostFeed):
                body = Load(model_id=run.model_id, offset=run.load.slice.offset, follow=fill.id, ready=fill.ready)
                load = client.request(body)
                fill.follow(client)  # no await since `ready` was read: no advance falls in between
            else:
                peer = None if run.load.peer is None else Peer(device=run.load.peer, offset=run.load.peer_offset)
                body = Load(model_id=run.model_id, offset=run.load.slice.offset, peer=peer, fill_from=fill)
                load = client.request(body)
        # Sent right behind the load: the worker starts executing while the copy runs.
        sent = []
        for group, sizes, inputs in _groups(invs):
            early = _Early(run, group, sizes, started) if load is None else None  # no swap to wait for
            sent.append((group, sizes, self._infer(client, run, group[0], inputs, early), early))
        return load, sent

    async def _run(self, run: Run, st: Started) -> None:
        invs, started = st.invs, st.started
        loaded_ok, lost, failed = True, False, False
        exec_total: float | None = None
        try:
            if st.error is not None:
                raise st.error
            sent = st.sent
            if sent is None:
                fill: str | HostFeed | None = None
                if run.load is not None and run.load.fill:  # on disk, or arriving from another node
                    try:
                        fill = await self.fill_source(run.function)
                    except TorporError:
                        loaded_ok = False
                        raise
                sent = self._send(run, invs, fill, started)
            await self._evicted(run.device, run.evict, st.evicts)
            load, batched = sent
            swap_ms: float | None = None  # None: each reply's own wait for the swap's groups
            load_error: TorporError | None = None
            answers: list[tuple[float | None, bool]] = []  # per INFER frame answered: (exec ms or None, lost)
            if load is not None:
                # A swap from the disk tier replies once the host image is written too, after its
                # last group reached the device: an inference done before that is answered at once
                # (a failed one waits for the load's reply, which says why).
                while len(answers) < len(batched) and not load.done():
                    fut = batched[len(answers)][2]
                    await asyncio.wait((load, fut), return_when=asyncio.FIRST_COMPLETED)
                    if load.done() or fut.cancelled() or fut.exception() is not None:
                        break
                    answers.append(await self._answer(run, batched[len(answers)], started, None, None))
                try:
                    loaded = (await load).body
                    swap_ms = loaded.swap_ms
                    self.metrics.swapped_in(run.device, run.model_id, loaded.source, loaded.bytes)
                except TorporError as exc:
                    loaded_ok, load_error = False, exc
                self.apply(self.scheduler.swap_done(run.device, ok=loaded_ok))
            for inv in invs:
                inv.phase = "exec"
            for sent_frame in batched[len(answers) :]:
                answers.append(await self._answer(run, sent_frame, started, swap_ms or 0.0, load_error))
            lost = any(gone for _, gone in answers)
            failed = any(ms is None for ms, _ in answers)
            exec_total = sum(ms for ms, _ in answers if ms is not None)
            if len(batched) > 1:
                exec_total = None  # run one by one: not the batched time the profile predicts
            # One loop turn: the requests answered above write their responses before the
            # scheduler hears of the run's end and decides again, which they need not wait for.
            await asyncio.sleep(0)
        except TorporError as exc:
            lost = lost or isinstance(exc, WorkerLost)
            failed = True
            for inv in invs:
                self._failed(inv, exc)
        except Exception as exc:  # a bug here must not strand the requests
            log.exception("run on device %d failed", run.device)
            for inv in invs:
                _fail(inv, Unavailable(f"internal error while dispatching: {type(exc).__name__}"))
            loaded_ok, failed = False, True
        finally:
            self.metrics.device_busy(run.device, time.perf_counter() - started)
            if lost:
                # Mark the device lost before anything else can be placed on it; the pool
                # restarts the worker and reports it added again.
                self.apply(self.scheduler.device_lost(run.device))
            else:
                self.apply(self.scheduler.finished(run.device, loaded_ok=loaded_ok, exec_ms=exec_total, failed=failed))

    async def _split_run(self, run: Run, st: Started) -> None:
        """A cold start split across devices (ParaServe; Run.shares): every device loads its stage's
        share of the image at once, each request runs stage by stage with the values crossing each
        cut relayed through here, and the scheduler then evicts the other stages' shares and has the
        first device consolidate the rest of the model (Scheduler.finished)."""
        invs, started = st.invs, st.started
        k = len(run.devices)
        assert run.load is not None, "only a swap-in is split"
        offsets = [run.load.slice.offset, *(s.slice.offset for s in run.shares)]
        evicts = [run.evict, *(s.evict for s in run.shares)]
        lost: int | None = None  # the device whose worker was lost, if one was
        loaded_ok, failed = False, True
        device = run.device
        loads: list[asyncio.Future[Any]] = []
        try:
            parts = [Part(cuts=list(self._cuts(run, k)), stage=i, whole=i == 0) for i in range(k)]
            clients = [self.pool.client(d) for d in run.devices]
            replies = [[c.request(EvictFrame(model_id=m)) for m in ms] for c, ms in zip(clients, evicts, strict=True)]
            loads = [
                client.request(Load(model_id=run.model_id, offset=offset, part=part))
                for client, offset, part in zip(clients, offsets, parts, strict=True)
            ]
            for d, ms, sent in zip(run.devices, evicts, replies, strict=True):
                await self._evicted(d, ms, sent)
            answered = []
            for group, sizes, inputs in _groups(invs):
                values, exec_ms = inputs, 0.0
                for i, client in enumerate(clients):
                    device = run.devices[i]
                    names = group[0].output_names if i == k - 1 else []
                    metas = [tensor_meta(t) for t in values]
                    body = Infer(model_id=run.model_id, inputs=metas, output_names=names, part=parts[i])
                    frame = await client.request(body, [t["data"] for t in values])
                    exec_ms += frame.body.exec_ms
                    values = tensor_maps(frame.body.outputs, frame.buffers)
                for inv in group:
                    inv.phase = "exec"
                answered.append((group, sizes, values, exec_ms))
            swap_ms = 0.0
            for i, load in enumerate(loads):
                device = run.devices[i]
                loaded = (await load).body
                swap_ms = max(swap_ms, loaded.swap_ms)
                self.metrics.swapped_in(device, run.model_id, loaded.source, loaded.bytes)
            loaded_ok, failed, device = True, False, run.device
            self.apply(self.scheduler.swap_done(run.device))
            source = "split:" + ",".join(str(d) for d in run.devices)
            for group, sizes, values, exec_ms in answered:
                outputs = batching.split(values, sizes) if len(group) > 1 else [values]
                for inv, out in zip(group, outputs, strict=True):
                    if not inv.future.done():
                        queue_ms = (started - inv.arrived) * 1e3
                        inv.future.set_result(Outcome(out, run.device, source, queue_ms, swap_ms, exec_ms, len(group)))
            await asyncio.sleep(0)  # as in _run: the answers are written before the next decisions
        except TorporError as exc:
            if isinstance(exc, WorkerLost):
                lost = device
            else:  # a stage found its share missing: the load's own error says why
                exc = next((e for f in loads if f.done() and isinstance(e := f.exception(), TorporError)), exc)
            for f in loads:  # the loads not awaited: their errors are the run's, already answered
                f.add_done_callback(_retrieved)
            for inv in invs:
                self._failed(inv, exc)
        except Exception as exc:  # a bug here must not strand the requests
            log.exception("split run on devices %s failed", list(run.devices))
            for inv in invs:
                _fail(inv, Unavailable(f"internal error while dispatching: {type(exc).__name__}"))
        finally:
            for d in run.devices:
                self.metrics.device_busy(d, time.perf_counter() - started)
            # Only where the scheduler still holds this run: a lost worker's report (the service's
            # or ours) ends it on every device it held, and a freed device may run another by now.
            held = [d for d in run.devices if self.scheduler.devices[d].running is run]
            if lost is not None and lost in held:
                self.apply(self.scheduler.device_lost(lost))
            else:
                for d in reversed(held):  # the shares first: the first device then consolidates
                    self.apply(self.scheduler.finished(d, loaded_ok=loaded_ok, failed=failed))

    def _cuts(self, run: Run, k: int) -> tuple[int, ...]:
        """The swap-group cuts of the run's model into k stages, as its workers reported them."""
        cut = self.scheduler.info(run.function).cut(k) if self.scheduler.has(run.function, run.model_id) else None
        if cut is None:
            raise Unavailable(f"function {run.function!r} was replaced while its cold start was split")
        return cut.cuts

    async def _answer(
        self,
        run: Run,
        sent: tuple[list[Invocation], list[int], Any, _Early | None],
        started: float,
        swap_ms: float | None,
        load_error: TorporError | None,
    ) -> tuple[float | None, bool]:
        """Answer one INFER frame's requests from its reply: (its exec ms, None if it failed; worker lost)."""
        group, sizes, fut, early = sent
        try:
            frame = await fut
            if early is None or not early.answered:
                _resolve(run, group, sizes, started, swap_ms, frame)
        except TorporError as exc:
            lost = isinstance(exc, WorkerLost)
            for inv in group:
                self._failed(inv, load_error if load_error is not None and not lost else exc)
            return None, lost
        except ValueError as exc:  # a batched reply that does not split: the model broke its signature
            for inv in group:
                _fail(inv, RequestFailed(f"batched execution returned {exc}"))
            return None, False
        return frame.body.exec_ms, False

    @staticmethod
    def _infer(client: Any, run: Run, inv: Invocation, inputs: list[dict[str, Any]], on_reply: _Early | None) -> Any:
        # Tensor bytes travel as the frame's buffers, after the header: not copied into it.
        body = Infer(model_id=run.model_id, inputs=[tensor_meta(t) for t in inputs], output_names=inv.output_names)
        return client.request(body, [t["data"] for t in inputs], on_reply)

    def _failed(self, inv: Invocation, exc: TorporError) -> None:
        if isinstance(exc, WorkerLost) and inv.attempts < MAX_RETRIES and not inv.future.done():
            inv.attempts += 1
            log.warning("request for %s lost with its worker (%s); retrying once", inv.function, exc.message)
            self._submit(inv)
            return
        if isinstance(exc, WorkerLost):
            exc = WorkerLost(f"{exc.message}; the request was retried once and failed again")
        _fail(inv, exc)


def _groups(invs: list[Invocation]) -> list[tuple[list[Invocation], list[int], list[dict[str, Any]]]]:
    """The run's INFER frames: (requests, their batch sizes, inputs) -- one batched frame when it
    can be joined, else one per request."""
    joined = batching.join([inv.inputs for inv in invs]) if len(invs) > 1 else None
    if joined is not None:
        return [(invs, joined[1], joined[0])]
    return [([inv], [0], inv.inputs) for inv in invs]


def _resolve(
    run: Run, group: list[Invocation], sizes: list[int], started: float, swap_ms: float | None, frame: Frame
) -> None:
    """Answer one INFER frame's requests from its reply (ValueError, TorporError: a malformed reply)."""
    reply = frame.body
    tensors = tensor_maps(reply.outputs, frame.buffers)
    outputs = batching.split(tensors, sizes) if len(group) > 1 else [tensors]
    for inv, out in zip(group, outputs, strict=True):
        if not inv.future.done():
            inv.future.set_result(
                Outcome(
                    outputs=out,
                    device=run.device,
                    source="resident" if run.load is None else run.load.source,
                    queue_ms=(started - inv.arrived) * 1e3,
                    swap_ms=reply.wait_ms if swap_ms is None else swap_ms,
                    exec_ms=reply.exec_ms,
                    batch=len(group),
                )
            )


class _Early:
    """A resident run's INFER reply answers its requests as it is read (WorkerClient's on_reply),
    a loop turn before the run's task would; `answered` says it did, so _answer does not again."""

    __slots__ = ("run", "group", "sizes", "started", "answered")

    def __init__(self, run: Run, group: list[Invocation], sizes: list[int], started: float) -> None:
        self.run, self.group, self.sizes, self.started = run, group, sizes, started
        self.answered = False

    def __call__(self, frame: Frame) -> None:
        try:
            _resolve(self.run, self.group, self.sizes, self.started, 0.0, frame)
        except (ValueError, TorporError):
            return  # a malformed reply: _answer meets it too, and fails the requests
        self.answered = True


async def _no_disk_tier(function: str) -> str | HostFeed | None:
    raise Unavailable(f"function {function!r} is on the disk tier but this server has none")


def _rejection(inv: Invocation, reason: str) -> TorporError:
    if reason == "unloaded":
        return Unavailable(
            f"function {inv.function!r} was unloaded while the request waited; "
            f"load it with POST /v2/repository/models/{inv.function}/load"
        )
    if reason == "removed":
        return NotFound(f"function {inv.function!r} was removed or replaced while the request waited")
    if reason == "overloaded":
        return Shed(
            f"function {inv.function!r} is shed: this node is overloaded (its functions ask for more device time "
            "than it admits) and serves the functions it can keep within their SLOs; retry later"
        )
    if reason == "late":
        return DroppedLate(
            f"function {inv.function!r} drops requests that can no longer meet its SLO (drop_late), "
            "and this one could not; retry later"
        )
    return Unavailable(f"function {inv.function!r} cannot be served: {reason}")


def _phase_text(phase: str) -> str:
    return {"queue": "a device (queued)", "swap": "the model's swap-in", "exec": "execution"}[phase]


def _fail(inv: Invocation, exc: Exception) -> None:
    if not inv.future.done():
        inv.future.set_exception(exc)


def _retrieved(fut: asyncio.Future[Any]) -> None:
    """A reply's error retrieved, so a reply nobody awaits (its run failed first) logs nothing."""
    if not fut.cancelled():
        fut.exception()
