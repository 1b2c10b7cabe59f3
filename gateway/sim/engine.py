"""Discrete-event simulation of one node: the live scheduler object on a virtual clock.

No processes and no sleeping: the clock jumps from event to event, so a day of
traffic runs in seconds. The scheduler is the very object the gateway drives;
only the devices are simulated. The simulated truth, given a hardware profile:

- a swap-in moves the model's bytes over its link at the bandwidth share it gets
  when it starts (transfers through one PCIe switch share it equally; NVLink is
  not shared); the share is fixed for the transfer's duration, a simplification;
- execution takes the profiled time for the batch size, times `interference` for a
  heavy model if a device on its PCIe switch is swapping when it starts, times
  log-normal jitter;
- swap-in and execution overlap as the profile's pipeline_overlap says.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from collections.abc import Iterable
from dataclasses import dataclass, field

from gateway.costmodel import CostModel, ExecProfile, pipelined
from gateway.scheduler import Evict, FunctionInfo, Reject, Run, Scheduler
from gateway.sim.profile import HardwareProfile, ModelProfile

ARRIVE, SWAP_DONE, FINISH = 0, 1, 2


@dataclass(frozen=True)
class SimFunction:
    name: str
    model: ModelProfile
    slo_ms: float
    percentile: float = 0.98
    max_batch: int = 1
    drop_late: bool = False


@dataclass
class DeviceTally:
    busy_s: float = 0.0
    runs: int = 0
    swaps: dict[str, int] = field(default_factory=lambda: {"host": 0, "peer": 0})
    swap_bytes: dict[str, int] = field(default_factory=lambda: {"host": 0, "peer": 0})
    evictions: int = 0


@dataclass
class FunctionTally:
    latencies_ms: list[float] = field(default_factory=list)
    dropped: int = 0  # rejected (late, or no device) or never served


class Simulation:
    def __init__(self, profile: HardwareProfile, policy: str, functions: list[SimFunction], seed: int = 0) -> None:
        self.profile = profile
        self.policy = policy
        self.functions = functions
        self.now = 0.0
        self.scheduler = Scheduler(profile.topology, lambda: self.now, policy, seed=seed)
        self.cost = CostModel(profile.topology)
        self._rng = random.Random(seed + 1)
        self._events: list[tuple[float, int, int, int]] = []  # (time, seq, kind, device)
        self._seq = itertools.count()
        self._running: dict[int, tuple[Run, float]] = {}  # device -> (run, exec ms)
        self._transferring: dict[int, set[int]] = {}  # device -> switches its copy goes through
        self._arrival: dict[int, tuple[int, float]] = {}  # rid -> (function index, time)
        self.devices = [DeviceTally() for _ in range(profile.devices)]
        self.tallies = [FunctionTally() for _ in functions]
        self._index = {f.name: i for i, f in enumerate(functions)}
        self.end = 0.0
        # Native serving gives each function its own process on its device: its runtime
        # (CUDA context, framework workspace) takes device memory beside the weights.
        overhead = profile.native_overhead if policy == "native" else 0
        for f in functions:
            m = f.model
            self.scheduler.function_added(
                FunctionInfo(
                    f.name,
                    f"{f.name}@1",
                    m.nbytes + overhead,
                    slo_ms=f.slo_ms,
                    percentile=f.percentile,
                    exec_ms=m.exec_ms,
                    batch_exec_ms=m.batch_exec_ms,
                    max_batch_size=min(f.max_batch, m.max_batch) if m.batch_exec_ms else 1,
                    drop_late=f.drop_late,
                    heavy=m.heavy,
                )
            )

    def run(self, arrivals: Iterable[tuple[float, int]], horizon_s: float = 300.0) -> Simulation:
        """Feed (time s, function index) arrivals in time order; run until all is served."""
        rid = itertools.count(1)
        for t, fi in arrivals:
            while self._events and self._events[0][0] <= t:
                self._step()
            self.now = t
            r = next(rid)
            self._arrival[r] = (fi, t)
            self._apply(self.scheduler.arrived(r, self.functions[fi].name))
        self.end = self.now
        stop = self.now + horizon_s
        while self._events and self._events[0][0] <= stop:
            self._step()
        for fi, _ in self._arrival.values():  # still waiting at the horizon: a miss
            self.tallies[fi].dropped += 1
        self._arrival.clear()
        self.end = max(self.end, self.now)
        return self

    # -- internals ---------------------------------------------------------------
    def _step(self) -> None:
        t, _, kind, device = heapq.heappop(self._events)
        self.now = t
        if kind == SWAP_DONE:
            self._transferring.pop(device, None)
            self._apply(self.scheduler.swap_done(device))
            return
        run, exec_ms = self._running.pop(device)
        for r in run.rids:
            fi, arrived = self._arrival.pop(r)
            self.tallies[fi].latencies_ms.append((t - arrived) * 1e3)
        self._apply(self.scheduler.finished(device, exec_ms=exec_ms))

    def _apply(self, decisions: list) -> None:
        for d in decisions:
            if isinstance(d, Run):
                self._start(d)
            elif isinstance(d, Evict):
                self.devices[d.device].evictions += 1
            elif isinstance(d, Reject):
                fi, _ = self._arrival.pop(d.rid)
                self.tallies[fi].dropped += 1

    def _start(self, run: Run) -> None:
        topo = self.profile.topology
        fn = self.functions[self._index[run.function]]
        tally = self.devices[run.device]
        tally.evictions += len(run.evict)
        transfer_ms = 0.0
        if run.load is not None:
            active: dict[int, int] = {}
            for switches in self._transferring.values():
                for s in switches:
                    active[s] = active.get(s, 0) + 1
            transfer_ms = self.cost.transfer_ms(fn.model.nbytes, run.device, run.load.peer, active)
            kind = "host" if run.load.peer is None else "peer"
            tally.swaps[kind] += 1
            tally.swap_bytes[kind] += fn.model.nbytes
            through = {topo.switches[run.device]}
            if run.load.peer is not None:
                if topo.direct(run.device, run.load.peer):
                    through = set()
                else:
                    through.add(topo.switches[run.load.peer])
            self._transferring[run.device] = through
            self._push(self.now + transfer_ms / 1e3, SWAP_DONE, run.device)
        m = fn.model
        exec_ms = ExecProfile(m.exec_ms, m.batch_exec_ms, m.max_batch).at(len(run.rids))
        swapping_near = any(n in self._transferring for n in topo.neighbours(run.device))
        if m.heavy and swapping_near:
            exec_ms *= topo.interference
        if self.profile.exec_jitter:
            exec_ms *= math.exp(self._rng.gauss(0, self.profile.exec_jitter))
        total_ms = pipelined(transfer_ms, exec_ms, topo.pipeline_overlap)
        tally.busy_s += total_ms / 1e3
        tally.runs += 1
        self._running[run.device] = (run, exec_ms)
        self._push(self.now + total_ms / 1e3, FINISH, run.device)

    def _push(self, t: float, kind: int, device: int) -> None:
        heapq.heappush(self._events, (t, next(self._seq), kind, device))
