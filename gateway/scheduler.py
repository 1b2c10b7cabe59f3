"""The scheduling policy as a pure object: events in, decisions out.

No sockets, no asyncio, no torch; the clock is injected. The gateway's
dispatcher drives it with real workers, tests drive it with a fake clock.

Policy: one inference at a time per device. Requests wait in per-function FIFO
queues; functions are served in the order of their oldest waiting request. A
request runs on an idle device that holds its model; else, if a busy device holds
it, the model is copied from that peer; else it is swapped in from host memory.
The target is the idle device that must evict the fewest bytes, least recently
used models first. Nothing in use or being copied from is ever evicted.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from shared.arena import ArenaLayout, Slice


@dataclass(frozen=True)
class FunctionInfo:
    name: str
    model_id: str
    nbytes: int


@dataclass(frozen=True)
class Load:
    """Swap the model into `slice` of the device's arena, from host memory or a peer device."""

    slice: Slice
    peer: int | None = None  # source device; None = the host image
    peer_offset: int = 0  # where the model lies in the peer's arena

    @property
    def source(self) -> str:
        return "host" if self.peer is None else f"peer:{self.peer}"


@dataclass(frozen=True)
class Run:
    device: int
    function: str
    model_id: str
    rids: tuple[int, ...]
    evict: tuple[str, ...] = ()  # models to drop first, to make room
    load: Load | None = None  # None: the model is already resident


@dataclass(frozen=True)
class Evict:
    device: int
    model_id: str


@dataclass(frozen=True)
class Reject:
    rid: int
    reason: str  # "removed"


Decision = Run | Evict | Reject


@dataclass
class Resident:
    model_id: str
    slice: Slice
    last_used: float
    pins: int = 0  # peer copies reading it right now
    loading: bool = False  # its swap-in has not been confirmed yet: not a peer source


@dataclass
class DeviceState:
    index: int
    layout: ArenaLayout
    resident: OrderedDict[str, Resident] = field(default_factory=OrderedDict)  # LRU first
    running: Run | None = None
    online: bool = True

    @property
    def idle(self) -> bool:
        return self.online and self.running is None

    def in_use(self) -> set[str]:
        """Models that must not be evicted: executing, or a peer is copying them."""
        busy = {m for m, r in self.resident.items() if r.pins}
        return busy | ({self.running.model_id} if self.running else set())


@dataclass
class Waiting:
    rid: int
    arrived: float


class Scheduler:
    def __init__(self, capacities: list[int], clock: Callable[[], float]) -> None:
        self.clock = clock
        self.devices = [DeviceState(i, ArenaLayout(c)) for i, c in enumerate(capacities)]
        self.functions: dict[str, FunctionInfo] = {}
        self.queues: dict[str, deque[Waiting]] = {}

    def __repr__(self) -> str:
        busy = sum(d.running is not None for d in self.devices)
        offline = sum(not d.online for d in self.devices)
        queued = sum(len(q) for q in self.queues.values())
        return (
            f"<Scheduler devices={len(self.devices)} busy={busy} offline={offline} "
            f"functions={len(self.functions)} queued={queued}>"
        )

    # -- events ----------------------------------------------------------------
    def function_added(self, fn: FunctionInfo) -> list[Decision]:
        self.functions[fn.name] = fn
        self.queues.setdefault(fn.name, deque())
        return []

    def function_removed(self, name: str) -> list[Decision]:
        fn = self.functions.pop(name, None)
        decisions: list[Decision] = [Reject(w.rid, "removed") for w in self.queues.pop(name, ())]
        if fn is not None:
            for d in self.devices:
                if fn.model_id in d.resident and fn.model_id not in d.in_use():
                    self._drop(d, fn.model_id)
                    decisions.append(Evict(d.index, fn.model_id))
        return decisions

    def arrived(self, rid: int, function: str) -> list[Decision]:
        if function not in self.functions:
            return [Reject(rid, "removed")]
        self.queues[function].append(Waiting(rid, self.clock()))
        return self._dispatch()

    def cancel(self, rid: int, function: str) -> bool:
        """Take a waiting request out of its queue (deadline passed); False if it already runs."""
        queue = self.queues.get(function)
        if queue is None:
            return False
        for w in queue:
            if w.rid == rid:
                queue.remove(w)
                return True
        return False

    def queued(self) -> int:
        return sum(len(q) for q in self.queues.values())

    def finished(self, device: int, loaded_ok: bool = True) -> list[Decision]:
        """The device finished its Run (successfully or not) and is idle again."""
        d = self.devices[device]
        run, d.running = d.running, None
        decisions: list[Decision] = []
        if run is not None and run.load is not None and run.load.peer is not None:
            src = self.devices[run.load.peer].resident.get(run.model_id)
            if src is not None:
                src.pins -= 1
        if run is not None:
            if not loaded_ok:
                self._drop(d, run.model_id)
            elif run.model_id in d.resident:
                d.resident[run.model_id].loading = False
                d.resident[run.model_id].last_used = self.clock()
                d.resident.move_to_end(run.model_id)
            if run.function not in self.functions or self.functions[run.function].model_id != run.model_id:
                if run.model_id in d.resident:  # removed while it ran: evict now it is free
                    self._drop(d, run.model_id)
                    decisions.append(Evict(device, run.model_id))
        return decisions + self._dispatch()

    def device_lost(self, device: int) -> list[Decision]:
        d = self.devices[device]
        run, d.online, d.running = d.running, False, None
        if run is not None and run.load is not None and run.load.peer is not None:
            src = self.devices[run.load.peer].resident.get(run.model_id)
            if src is not None:
                src.pins -= 1
        for model_id in list(d.resident):
            self._drop(d, model_id)
        return []

    def device_added(self, device: int) -> list[Decision]:
        self.devices[device].online = True
        return self._dispatch()

    # -- queries ---------------------------------------------------------------
    def residency(self, model_id: str) -> list[int]:
        return [d.index for d in self.devices if model_id in d.resident]

    def queue_depth(self, function: str) -> int:
        return len(self.queues.get(function, ()))

    # -- policy ----------------------------------------------------------------
    def _dispatch(self) -> list[Decision]:
        decisions: list[Decision] = []
        while any(d.idle for d in self.devices):
            heads = sorted((q[0].arrived, name) for name, q in self.queues.items() if q)
            placed = False
            for _, name in heads:
                run = self._place(self.functions[name])
                if run is not None:
                    decisions.append(run)
                    placed = True
                    break
            if not placed:
                break
        return decisions

    def _place(self, fn: FunctionInfo) -> Run | None:
        idle = [d for d in self.devices if d.idle]
        warm = [d for d in idle if fn.model_id in d.resident]
        if warm:
            return self._start(warm[0], fn, (), None)
        # Torpor's Algorithm 1: a busy device holding the model can serve it as a peer.
        peers = [
            d for d in self.devices if d.online and fn.model_id in d.resident and not d.resident[fn.model_id].loading
        ]
        best: tuple[int, int, DeviceState, list[str]] | None = None
        for d in idle:
            victims = self._victims(d, fn.nbytes)
            if victims is None:
                continue
            freed = sum(d.resident[v].slice.size for v in victims)
            if best is None or (freed, d.index) < best[:2]:
                best = (freed, d.index, d, victims)
        if best is None:
            return None
        d, victims = best[2], best[3]
        for v in victims:
            self._drop(d, v)
        s = d.layout.allocate(fn.nbytes)
        assert s is not None, "victims were chosen to make room"
        d.resident[fn.model_id] = Resident(fn.model_id, s, self.clock(), loading=True)
        load = Load(s)
        if peers:
            src = peers[0].resident[fn.model_id]
            src.pins += 1  # released in finished()
            load = Load(s, peers[0].index, src.slice.offset)
        return self._start(d, fn, tuple(victims), load)

    def _victims(self, d: DeviceState, nbytes: int) -> list[str] | None:
        """Least-recently-used idle models to evict so that `nbytes` fits, or None."""
        if nbytes > d.layout.capacity:
            return None
        victims: list[str] = []
        released: list[Slice] = []
        busy = d.in_use()
        for model_id, r in d.resident.items():  # LRU first
            if d.layout.fits_after_releasing(nbytes, released):
                return victims
            if model_id in busy:
                continue
            victims.append(model_id)
            released.append(r.slice)
        return victims if d.layout.fits_after_releasing(nbytes, released) else None

    def _start(self, d: DeviceState, fn: FunctionInfo, evict: tuple[str, ...], load: Load | None) -> Run:
        waiting = self.queues[fn.name].popleft()
        run = Run(d.index, fn.name, fn.model_id, (waiting.rid,), evict, load)
        d.running = run
        return run

    def _drop(self, d: DeviceState, model_id: str) -> None:
        r = d.resident.pop(model_id, None)
        if r is not None:
            d.layout.release(r.slice)
