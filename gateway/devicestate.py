"""What the scheduler tracks per device and per function (pure bookkeeping, no policy)."""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field

from gateway.costmodel import ExecProfile
from gateway.decisions import FunctionInfo, Run
from gateway.slo import SloWindow
from shared.arena import ArenaLayout, Slice


@dataclass
class Resident:
    model_id: str
    slice: Slice
    last_used: float
    pins: int = 0  # peer copies reading it right now
    loading: bool = False  # not (yet) fully on the device: not a peer source


@dataclass
class Transfer:
    """A prefetch: a model copied onto a device by its copy engine while the device runs something else."""

    function: str
    model_id: str
    peer: int | None
    started: float
    predicted_ms: float

    @property
    def ends(self) -> float:
        return self.started + self.predicted_ms / 1e3


@dataclass
class DeviceState:
    index: int
    layout: ArenaLayout
    resident: OrderedDict[str, Resident] = field(default_factory=OrderedDict)  # LRU first
    running: Run | None = None
    started: float = 0.0
    online: bool = True
    prefetch: Transfer | None = None  # the copy engine's own transfer, if any
    share: Slice | None = None  # its part of a split cold start it runs a stage of (not a resident model)

    @property
    def idle(self) -> bool:
        return self.online and self.running is None

    @property
    def swapping(self) -> bool:
        """Its copy engine is busy: a swap-in for the running request, or a prefetch."""
        if self.prefetch is not None:
            return True
        run = self.running
        if run is not None and run.device != self.index:
            return True  # a share of a split cold start: its copy is counted until the run ends
        return run is not None and run.load is not None and self.resident[run.model_id].loading

    def transfer_function(self) -> str | None:
        """The function whose model the copy engine is bringing in, if any."""
        if self.prefetch is not None:
            return self.prefetch.function
        return self.running.function if self.swapping and self.running is not None else None

    def transfer_peer(self) -> int | None:
        if self.prefetch is not None:
            return self.prefetch.peer
        run = self.running
        return run.load.peer if run is not None and run.load is not None else None

    def in_use(self) -> set[str]:
        """Models that must not be evicted: executing, loading, or a peer is copying them."""
        busy = {m for m, r in self.resident.items() if r.pins or r.loading}
        return busy | ({self.running.model_id} if self.running else set())


@dataclass
class Waiting:
    rid: int
    arrived: float
    deadline: float


@dataclass
class FunctionState:
    info: FunctionInfo
    exec: ExecProfile
    slo: SloWindow
    queue: deque[Waiting] = field(default_factory=deque)
    home: int | None = None  # native: its dedicated device
    host_tier: str = "host"  # where its image is: host, filling or disk (gateway.hosttier.Tier)
    no_prefetch_until: float = 0.0  # a prefetch of its model failed: none before this time


@dataclass
class Plan:
    device: DeviceState
    victims: list[str]
    transfer_ms: float  # 0 when resident
    source: int | None  # peer device, or None for host (or resident)
    cold: bool
    # A split cold start (ParaServe): the other stages' devices, in stage order, with what each evicts
    shares: list[tuple[DeviceState, list[str]]] = field(default_factory=list)
