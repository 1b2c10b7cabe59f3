"""The swap engine: copy a model's packed image into its arena slice, group by group.

Groups are ~2 MB runs of whole tensors in first-use order (Torpor found ~2 MB to
be the knee of the transfer-size curve). One copy thread per device plays the
role of a GPU's copy engine; each group has an event that execution waits on
just before the first operation that reads it, so compute overlaps the copy.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from gpuworker.backends import Backend
from shared.errors import RequestFailed
from shared.modelstore import TensorTable


@dataclass(frozen=True)
class SwapPlan:
    """Byte ranges [bounds[k], bounds[k+1]) of the image, and each tensor's group."""

    bounds: tuple[int, ...]
    group_of: dict[str, int]

    @property
    def groups(self) -> int:
        return len(self.bounds) - 1


def plan_groups(table: TensorTable, group_bytes: int) -> SwapPlan:
    bounds = [0]
    group_of: dict[str, int] = {}
    for e in sorted(table.entries, key=lambda e: e.offset):
        # Close the current group before a tensor that starts past the size target,
        # so a group is never cut through the middle of a tensor.
        if e.offset - bounds[-1] >= group_bytes and e.offset > bounds[-1]:
            bounds.append(e.offset)
        group_of[e.name] = len(bounds) - 1
    if table.nbytes > bounds[-1] or len(bounds) == 1:
        bounds.append(table.nbytes)
    return SwapPlan(tuple(bounds), group_of)


class HostFill:
    """How much of a host image has arrived so far, while it is still being filled.

    A model on the disk tier (read by the worker) or on another node (fetched by the
    gateway, which reports progress in FILL frames) reaches host memory chunk by chunk;
    the copy thread waits here for each group's bytes instead of for the whole image,
    so read or fetch, host-to-device copy and execution overlap group by group.
    """

    def __init__(self) -> None:
        self.ready = 0
        self.error: str | None = None
        self.complete = False  # the whole host image is in place (a swap's reply means it is)
        self.cancelled = False  # the swap was cancelled: the filler stops at its next chunk
        self.finished = threading.Event()  # the filler no longer writes anywhere
        self._cond = threading.Condition()
        self._runs = [0, 0]  # inferences started / ended on the model while its image is being filled

    def run_started(self) -> None:
        with self._cond:
            self._runs[0] += 1

    def run_ended(self) -> None:
        with self._cond:
            self._runs[1] += 1
            self._cond.notify_all()

    def wait_runs(self) -> None:
        """Return once the inferences running now have ended (not those started later: no starvation)."""
        with self._cond:
            started = self._runs[0]
            self._cond.wait_for(lambda: self._runs[1] >= started or self.cancelled)

    def done(self) -> None:
        with self._cond:
            self.complete = True
            self._cond.notify_all()

    def cancel(self) -> None:
        """The swap is cancelled: a copy thread waiting here gives up (a reader stops at its next chunk)."""
        with self._cond:
            self.cancelled = True
            self._cond.notify_all()

    def wait_complete(self) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self.complete or self.error is not None or self.cancelled)
            if not self.complete:
                raise RequestFailed(f"host image unavailable: {self.error or 'cancelled by an eviction'}")

    def advance(self, upto: int) -> None:
        with self._cond:
            self.ready = max(self.ready, upto)
            self._cond.notify_all()

    def fail(self, message: str) -> None:
        with self._cond:
            self.error = message
            self._cond.notify_all()

    def wait_for(self, upto: int) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self.ready >= upto or self.error is not None or self.cancelled)
            if self.ready < upto:
                raise RequestFailed(f"host image unavailable: {self.error or 'cancelled by an eviction'}")


@dataclass
class Swap:
    """One in-flight copy; execution waits on its per-group events."""

    model_id: str
    plan: SwapPlan
    dst: torch.Tensor
    src: torch.Tensor
    on_done: Callable[[Swap], None]
    fill: HostFill | None = None  # the source is still arriving (disk tier): wait per group
    in_place: bool = False  # the fill writes dst itself (CPU arena): nothing to copy, only to wait for
    # The plan's groups are the model's groups first, first+1, ...: a pipeline stage's share, or
    # the rest of a model consolidated after its first stage (`before`, which brought the others).
    first: int = 0
    before: Swap | None = None
    events: list[threading.Event] = field(init=False)  # set once group k is copied (CPU) or enqueued (CUDA)
    handles: list[Any] = field(init=False)  # the backend's completion marker per group (CUDA: an event)
    error: str | None = None
    cancelled: bool = False
    started: float = 0.0
    finished: float = 0.0
    done: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.events = [threading.Event() for _ in range(self.plan.groups)]
        self.handles = [None] * self.plan.groups

    def wait_group(self, k: int, backend: Backend) -> None:
        """Return when execution may read the model's group k (on CUDA: once the compute stream waits for it)."""
        if k < self.first:
            if self.before is not None:
                self.before.wait_group(k, backend)
            return
        k -= self.first
        self.events[k].wait()
        if self.error is not None:
            raise RequestFailed(f"swap-in of model {self.model_id} failed: {self.error}")
        backend.wait_copied(self.handles[k])

    @property
    def seconds(self) -> float:
        return self.finished - self.started

    def cancel(self) -> None:
        self.cancelled = True
        if self.fill is not None:
            self.fill.cancel()


class SwapEngine:
    """A single copy thread: swaps on one device run one after another, like one DMA engine."""

    def __init__(self, backend: Backend) -> None:
        self._backend = backend
        self._jobs: queue.Queue[Swap | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="swap-copy", daemon=True)
        self._thread.start()

    def submit(self, swap: Swap) -> Swap:
        self._jobs.put(swap)
        return swap

    def close(self) -> None:
        self._jobs.put(None)
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while (swap := self._jobs.get()) is not None:
            self._copy(swap)

    def _copy(self, swap: Swap) -> None:
        swap.started = time.perf_counter()
        b = swap.plan.bounds
        try:
            for k in range(swap.plan.groups):
                if swap.cancelled:
                    raise RequestFailed("cancelled by an eviction")
                if swap.fill is not None:
                    swap.fill.wait_for(b[k + 1])
                if not swap.in_place:
                    swap.handles[k] = self._backend.copy(swap.dst[b[k] : b[k + 1]], swap.src[b[k] : b[k + 1]])
                swap.events[k].set()
            self._backend.wait_host(swap.handles[-1])  # timing and the reply mean "all bytes landed"
            if swap.fill is not None:
                swap.fill.wait_complete()  # ... in host memory too: the gateway then counts it on the host tier
        except Exception as exc:  # the copy must never kill the thread
            swap.error = exc.message if isinstance(exc, RequestFailed) else f"{type(exc).__name__}: {exc}"
            for ev in swap.events:
                ev.set()  # release any waiter; it will see .error
        swap.finished = time.perf_counter()
        swap.done.set()
        swap.on_done(swap)
