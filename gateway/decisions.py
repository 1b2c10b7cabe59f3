"""The scheduler's vocabulary: what it knows of a function, its policy presets, and its decisions.

Pure data, shared by the scheduler, the gateway's dispatcher and the simulator.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from shared.arena import Slice


@dataclass(frozen=True)
class Stages:
    """A model cut into k = len(cuts) - 1 pipeline stages, as its workers cut it at PREPARE."""

    cuts: tuple[int, ...]  # swap-group cuts [0, ..., groups]: what a stage's `Part` names
    sizes: tuple[int, ...]  # the bytes of the image each stage's device loads

    @property
    def k(self) -> int:
        return len(self.sizes)


@dataclass(frozen=True)
class FunctionInfo:
    name: str
    model_id: str
    nbytes: int
    slo_ms: float = 1000.0
    percentile: float = 0.98
    exec_ms: float = 10.0  # profiled at batch 1
    batch_exec_ms: float | None = None  # profiled at max_batch_size
    max_batch_size: int = 1
    drop_late: bool = False
    heavy: bool = True  # its execution suffers from a concurrent swap on its PCIe switch
    stages: tuple[Stages, ...] = ()  # its cuts for a split cold start (none: it is never split)

    def cut(self, k: int) -> Stages | None:
        return next((s for s in self.stages if s.k == k), None)


@dataclass(frozen=True)
class Policy:
    name: str
    slo_order: bool = True  # by urgency (see `order`); else FIFO by arrival
    peer_copy: bool = True
    neighbour_aware: bool = True
    smart_eviction: bool = True  # light and duplicate first; else plain LRU
    random_target: bool = False  # any idle device that fits, at random
    batching: bool = True
    drop_late: bool = True  # honour the functions' drop_late
    static: bool = False  # native: one dedicated device per function, no swapping
    wait_for_warm: bool = True  # rather wait for a busy device holding the model when that is sooner
    defer_late: bool = True  # requests that can no longer meet their deadline go after those that can
    # RRC above which a function is served after all others: at p98 each request beyond what the
    # percentile allows adds 50, so 200 is four (50, one, made a burst's misses last a window)
    give_up: float = 200.0
    # "budget": earliest deadline first, a function with misses to spare in its SLO window
    # yielding `spare_ms`; "rrc": Torpor's two classes split at a tuned RRC threshold.
    order: str = "budget"
    spare_ms: float = 40.0
    prefetch: bool = True  # a busy device's idle copy engine loads a waiting request's model ahead
    # What a duplicate replica may evict: "light" models and other duplicates only, or "never"
    # another model's only copy (Torpor §5.4's one replica per model when memory is full).
    duplicates: str = "light"
    warm_first: bool = True  # a freeing device serves what only it holds warm if the head can wait
    segregate: bool = True  # large models from the top of the arena, small ones from the bottom
    # Admission (gateway.admission): shed the costliest functions while the admitted ones ask for
    # more than this share of the online devices' time; None = serve every function.
    admit_utilization: float | None = 0.85
    # Pipeline-parallel cold start (ParaServe): a cold model whose swap-in would miss the SLO is
    # split across idle devices on different PCIe switches (gateway.paradegree). Simulated only:
    # the dispatcher does not drive split runs yet.
    split: bool = False


POLICIES = {
    "torpor": Policy("torpor"),
    "simpleswap": Policy(
        "simpleswap",
        slo_order=False,
        peer_copy=False,
        neighbour_aware=False,
        smart_eviction=False,
        random_target=True,
        batching=False,
        drop_late=False,
        wait_for_warm=False,
        defer_late=False,
        prefetch=False,
        warm_first=False,
        segregate=False,
        admit_utilization=None,
    ),
    "native": Policy(
        "native",
        slo_order=False,
        peer_copy=False,
        neighbour_aware=False,
        smart_eviction=False,
        batching=False,
        drop_late=False,
        static=True,
        wait_for_warm=False,
        defer_late=False,
        prefetch=False,
        warm_first=False,
        segregate=False,
        admit_utilization=None,
    ),
}
# Torpor with pipeline-parallel cold starts (simulation only, see Policy.split).
POLICIES["torpor+split"] = replace(POLICIES["torpor"], name="torpor+split", split=True)


@dataclass(frozen=True)
class Load:
    """Swap the model into `slice` of the device's arena, from host memory or a peer device."""

    slice: Slice
    peer: int | None = None  # source device; None = the host image
    peer_offset: int = 0  # where the model lies in the peer's arena
    fill: bool = False  # the host image is on disk: read it in while this copy follows
    # Of a split cold start over k devices: (0, k) -- only the first of k equal shares lands in
    # `slice`, which has the whole model's size; the rest follows as a consolidation (a Prefetch
    # with `rest`, the same `share`). The other stages' shares are the Run's `shares`.
    share: tuple[int, int] | None = None
    rest: bool = False  # a consolidation: the image after the first share, into the same slice

    @property
    def source(self) -> str:
        if self.peer is not None:
            return f"peer:{self.peer}"
        return "disk" if self.fill else "host"


@dataclass(frozen=True)
class Share:
    """Another device of a split cold start: it copies stage `stage`'s share of the image into
    `slice` (the share's size) and runs that stage; the share is evicted when the run ends."""

    device: int
    slice: Slice
    stage: int
    evict: tuple[str, ...] = ()  # models dropped from that device first, to make room


@dataclass(frozen=True)
class Run:
    device: int
    function: str
    model_id: str
    rids: tuple[int, ...]
    evict: tuple[str, ...] = ()  # models to drop first, to make room
    load: Load | None = None  # None: the model is already resident
    predicted_ms: float = 0.0  # service time the cost model expects
    shares: tuple[Share, ...] = ()  # a split cold start: the other stages' devices (busy with it)

    @property
    def devices(self) -> tuple[int, ...]:
        return (self.device, *(s.device for s in self.shares))


@dataclass(frozen=True)
class Prefetch:
    """Copy a waiting request's model onto a busy device while it executes another (its copy engine
    is idle), after evicting `evict`; the request itself is placed later, wherever is best then."""

    device: int
    function: str
    model_id: str
    evict: tuple[str, ...]
    load: Load
    predicted_ms: float = 0.0  # transfer time the cost model expects


@dataclass(frozen=True)
class Evict:
    device: int
    model_id: str


@dataclass(frozen=True)
class Reject:
    rid: int
    reason: str  # "removed", "unloaded", "late", "overloaded" (shed by admission) or "no device"


Decision = Run | Prefetch | Evict | Reject
