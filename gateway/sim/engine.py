"""Discrete-event simulation of one node: the live scheduler object on a virtual clock.

No processes and no sleeping: the clock jumps from event to event, so a day of
traffic runs in seconds. The scheduler is the very object the gateway drives;
only the devices are simulated. The simulated truth, given a hardware profile:

- a swap-in moves the model's bytes over its link at the bandwidth share it gets
  when it starts (transfers through one PCIe switch share it equally; NVLink is
  not shared); the share is fixed for the transfer's duration, a simplification;
- execution takes the profiled time for the batch size, times `interference` for a
  heavy model if a device on its PCIe switch is swapping when it starts, times
  a factor drawn from the model's measured spread (`exec_quantiles`) or else log-normal
  jitter; while another device executes, it progresses at 1 / the model's
  `corun_slowdown` of its speed (CPU devices share the host's cores and memory), and
  while another device copies, at 1 / its `copy_slowdown` if the profile's devices share
  one host (`shared_host`): over the time they overlap, whichever started first, re-timed
  at each change;
- a request first waits for the gateway: its model's `request_ms` (parse and encode), times
  a factor drawn from the model's measured spread (`request_quantiles`) if it has one, on
  the gateway's one event loop, after the requests that arrived before it; the scheduler
  sees it once parsed;
- with the profile's `host_cores` (CPU devices), executions, copies and the gateway's
  parsing share the host's cores, less the `background_cores` other processes keep busy:
  while they want more than there are (`device_threads` per executing device, one per copy,
  one for a parse), every execution and copy progresses at cores / demand, re-shared at
  each change, and a parse takes longer by the demand at its start, or by its model's
  measured slowdown beside as many devices executing (`request_slowdowns`) if that is more;
- swap-in and execution overlap as the model's pipeline_overlap says (the profile's
  where the model has none), plus a fixed swap_latency_ms per swap-in (the model's, else
  the profile's).

A profile with `interference_pairs` (Torpor's Table 3) replaces the bandwidth share and
the one factor: a swap-in over PCIe takes the pair's factor longer when a device on its
switch is swapping a model in over PCIe as it starts (the largest factor if several);
warm executions and NVLink copies are not slowed.

Every late request is given one reason (see `late_reason`), so a run says why each
function missed: the evidence the policy is tuned on.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from collections.abc import Iterable
from dataclasses import dataclass, field

from gateway.costmodel import CostModel, ExecProfile, pipelined
from gateway.paradegree import HANDOFF_MS, equal_cuts, rest_bytes, share_sizes
from gateway.scheduler import Evict, FunctionInfo, Policy, Prefetch, Reject, Run, Scheduler
from gateway.sim.profile import HardwareProfile, ModelProfile

ARRIVE, SWAP_DONE, FINISH, PREFETCH_DONE, PARSED = 0, 1, 2, 3, 4


@dataclass(frozen=True)
class SimFunction:
    name: str
    model: ModelProfile
    slo_ms: float
    percentile: float = 0.98
    max_batch: int = 1
    drop_late: bool = False
    # What the scheduler is told of the model (its only copy is costly to evict, its swap-in
    # does not hide): None, the profile's. A server measures it per function at deploy, a
    # few runs each, so its functions of one model may differ; the hardware's own slowdown
    # (the execution beside a swap) stays the model's.
    heavy: bool | None = None

    @property
    def told_heavy(self) -> bool:
        """The flag the scheduler is told: the function's own, else its model's."""
        return self.model.heavy if self.heavy is None else self.heavy


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
    late: dict[str, int] = field(default_factory=dict)  # late or dropped requests by reason
    swaps: dict[str, int] = field(default_factory=lambda: {"host": 0, "peer": 0})  # cold starts by source
    splits: int = 0  # of the host cold starts, those split across devices (Policy.split)
    last_served: float = float("-inf")

    def miss(self, reason: str) -> None:
        self.late[reason] = self.late.get(reason, 0) + 1


# Why a request was late: the largest part of its latency beyond its execution.
LATE_REASONS = {
    "queued_busy": "queued: every device was busy when it arrived (non-preemptive runs ahead of it)",
    "queued_held": "queued although a device was idle when it arrived (the policy held it: class, or waiting for "
    "a warm device)",
    "swap": "its model was swapped in (a cold start)",
    "swap_evicted_hot": "swapped in although its function had been served in the last 15 s: evicted while hot",
    "swap_interference": "its swap-in was slowed by a neighbour's swap on the same PCIe switch",
    "exec": "its own execution (batch) took longer than the SLO",
    "dropped": "rejected (drop_late, no device) or still waiting at the end",
    "shed": "rejected at once: admission shed its function while the node was overloaded",
}
HOT_S = 15.0  # a function served within this long is "hot": evicting its model is a policy miss


@dataclass
class _Started:
    """What the engine knows of a run in progress, to explain a late request."""

    run: Run
    model: ModelProfile
    exec_ms: float
    wait_ms: dict[int, float]
    swap_ms: float  # service time beyond execution
    interference_ms: float  # of which the neighbour's swap
    evicted_hot: bool
    began: float  # simulated time the run started
    work_ms: float  # its service time at full speed still to do, as of `since`
    finish_at: float  # when it ends at the current `rate`: a FINISH event at another time is stale
    since: float  # when work_ms was last brought up to date
    rate: float = 1.0  # the share of full speed it gets (the host's cores, when oversubscribed)


@dataclass
class _Copy:
    """A swap-in or prefetch under way: its copy thread shares the host's cores as executions do."""

    kind: int  # the event that ends it: SWAP_DONE or PREFETCH_DONE
    model: ModelProfile
    model_id: str
    through: set[int]  # the PCIe switches it crosses (none over NVLink)
    work_ms: float  # its time at full speed still to do, as of `since`
    finish_at: float
    since: float
    rate: float = 1.0


def _progress(p: _Started | _Copy, now: float, rate: float) -> bool:
    """Bring `p`'s work up to `now`; True if its end moved (it then goes at `rate`)."""
    p.work_ms -= (now - p.since) * 1e3 * p.rate
    p.since = now
    if rate == p.rate:
        return False
    p.rate = rate
    p.finish_at = now + max(0.0, p.work_ms) / rate / 1e3
    return True


class Simulation:
    def __init__(
        self,
        profile: HardwareProfile,
        policy: str | Policy,
        functions: list[SimFunction],
        seed: int = 0,
        preload: bool = True,
        record: bool = False,
        drift: tuple[float, ...] = (),
    ) -> None:
        self.profile = profile
        # The host's speed minute by minute of the trace, as a factor on every execution (the last
        # for the minutes after): a host whose speed moves during a replay (simreal's course
        # between the timings around it, or the server's own lone runs).
        self.drift = drift
        # With `record`, every served request as (function index, arrived s, began s, ended s,
        # execution ms at full speed, cold): to set beside the server's request log.
        self.served: list[tuple[int, float, float, float, float, bool]] | None = [] if record else None
        self.policy = policy if isinstance(policy, str) else policy.name
        self.functions = functions
        self.now = 0.0
        self.offset = 0.0  # when the trace began: after the deploy phase
        self.scheduler = Scheduler(profile.topology, lambda: self.now, policy, seed=seed, preload=preload)
        self.cost = CostModel(profile.topology)
        self._rng = random.Random(seed + 1)
        # Requests' own times draw from a stream of their own: a profile with their spread moves
        # no execution's draw.
        self._request_rng = random.Random(seed + 2)
        self._events: list[tuple[float, int, int, int]] = []  # (time, seq, kind, device)
        self._seq = itertools.count()
        self._running: dict[int, _Started] = {}
        self._copies: dict[int, _Copy] = {}  # device -> its swap-in or prefetch under way
        self._shares: dict[int, tuple[int, ...]] = {}  # a split run's first device -> its other devices
        self._arrival: dict[int, tuple[int, float, bool]] = {}  # rid -> (function index, time, a device idle)
        self._parsing_until = 0.0  # when the gateway has parsed every request that has arrived
        self.devices = [DeviceTally() for _ in range(profile.devices)]
        # Whether a run's speed depends on what the other devices do (see _beside).
        self._beside_factors = any(
            f.model.corun_slowdown != 1.0 or (profile.shared_host and f.model.copy_slowdown != 1.0) for f in functions
        )
        self.tallies = [FunctionTally() for _ in functions]
        self._index = {f.name: i for i, f in enumerate(functions)}
        self.end = 0.0
        # Native serving gives each function its own process on its device: its runtime
        # (CUDA context, framework workspace) takes device memory beside the weights.
        overhead = profile.native_overhead if self.scheduler.policy.static else 0
        for f in functions:
            m = f.model
            deployed = self.scheduler.function_added(
                FunctionInfo(
                    f.name,
                    f"{f.name}@1",
                    m.nbytes + overhead,
                    slo_ms=f.slo_ms,
                    percentile=f.percentile,
                    exec_ms=self._exec1(m),
                    batch_exec_ms=m.batch_exec_ms,
                    max_batch_size=min(f.max_batch, m.max_batch) if m.batch_exec_ms else 1,
                    drop_late=f.drop_late,
                    heavy=f.told_heavy,
                    stages=equal_cuts(m.nbytes + overhead),
                )
            )
            self._apply(deployed)
        self._apply(self.scheduler.settle())

    def run(self, arrivals: Iterable[tuple[float, int]], horizon_s: float = 300.0) -> Simulation:
        """Feed (time s, function index) arrivals in time order; run until all is served.

        The functions were deployed before the trace starts, as on a live server: the models
        the devices had room for are copied in first (the deploy phase), then the trace's
        time 0 begins.
        """
        rid = itertools.count(1)
        while self._events:
            self._step()
        self.offset = start = self.now
        for t, fi in arrivals:
            t += start
            while self._events and self._events[0][0] <= t:
                self._step()
            self.now = t
            self.arrive(next(rid), fi, t)
        self.end = self.now - start
        stop = self.now + horizon_s
        while self._events and self._events[0][0] <= stop:
            self._step()
        for fi, _, _ in self._arrival.values():  # still waiting at the horizon: a miss
            self.tallies[fi].dropped += 1
            self.tallies[fi].miss("dropped")
        self._arrival.clear()
        self.end = max(self.end, self.now - start)
        return self

    def arrive(self, rid: int, fi: int, arrived: float) -> None:
        """A request of function `fi` that arrived at `arrived` (its latency counts from then)."""
        model = self.functions[fi].model
        parse_ms = model.request_ms
        if parse_ms and model.request_quantiles:
            parse_ms *= model.request_jitter(self._request_rng.random())
        if not parse_ms:
            self._arrival[rid] = (fi, arrived, any(d.idle for d in self.scheduler.devices))
            self._apply(self.scheduler.arrived(rid, self.functions[fi].name))
            return
        # The gateway parses one request at a time, on cores it may share with the devices.
        self._arrival[rid] = (fi, arrived, False)
        idle = self.now >= self._parsing_until
        start = max(self.now, self._parsing_until)
        rate = self._rate(parsing=True)
        if model.request_slowdowns:  # measured beside k devices executing
            k = min(len(self._running), len(model.request_slowdowns))
            slow = max(1 / rate, model.request_slowdowns[k - 1] if k else 1.0)
        else:
            slow = 1.0 if rate == 1.0 else max(1 / rate, model.request_slowdown)
        self._parsing_until = start + parse_ms * slow / 1e3
        self._push(self._parsing_until, PARSED, rid)
        if idle:
            self._reshare()

    def _parsed(self, rid: int) -> None:
        fi, arrived, _ = self._arrival[rid]
        self._arrival[rid] = (fi, arrived, any(d.idle for d in self.scheduler.devices))
        self._apply(self.scheduler.arrived(rid, self.functions[fi].name))
        if self.now >= self._parsing_until:
            self._reshare()

    def _rate(self, parsing: bool | None = None) -> float:
        """The share of full speed each activity gets: cores / demand while demand exceeds the host's cores."""
        if self.profile.host_cores is None:
            return 1.0
        cores = self.profile.host_cores - self.profile.background_cores
        gateway = self.now < self._parsing_until if parsing is None else parsing
        demand = self.profile.device_threads * len(self._running) + len(self._copies) + gateway
        return 1.0 if demand <= cores else cores / demand

    def _reshare(self) -> None:
        """Bring every run's progress up to now and re-time its end at the current share of the
        cores and beside what the other devices do now."""
        if self.profile.host_cores is None and not self._beside_factors:
            return
        rate = self._rate()
        for device, s in self._running.items():
            if _progress(s, self.now, rate / self._beside(device)):
                self._push(s.finish_at, FINISH, device)
        for device, c in self._copies.items():
            if _progress(c, self.now, rate):
                self._push(c.finish_at, c.kind, device)

    def _beside(self, device: int) -> float:
        """How many times slower the run on `device` goes for what the other devices do now:
        its model's corun_slowdown while another executes (the host's cores and memory, CPU
        devices), times its copy_slowdown while a copy other than its own swap-in is under way
        (shared_host): another device's, or its own device's prefetch of the next model, whose
        copy thread reads and writes the same host memory as a neighbour's does.

        Over the overlap, not by what ran when it started: a run that started alone is slowed
        once a neighbour starts, as the server's is (on 2026-12-07, a resnet50 request with a
        resnet18 request sent 20-40 ms after it took 130.6-133.8 ms on a real server, where a
        factor taken at its start gave it 129.2 at every offset; `python -m loadtest.simpair`).
        """
        m = self._running[device].model
        slow = 1.0
        if m.corun_slowdown != 1.0 and len(self._running) > 1:
            slow *= m.corun_slowdown
        if self.profile.shared_host and m.copy_slowdown != 1.0:
            own = self._running[device].run.model_id
            if any(d != device or c.model_id != own for d, c in self._copies.items()):
                slow *= m.copy_slowdown
        return slow

    # -- internals ---------------------------------------------------------------
    def _step(self) -> None:
        t, _, kind, device = heapq.heappop(self._events)
        self.now = t
        if kind == PARSED:
            self._parsed(device)  # `device` is the request id
            return
        if kind in (SWAP_DONE, PREFETCH_DONE):
            copy = self._copies.get(device)
            if copy is None or copy.kind != kind or t != copy.finish_at:
                return  # re-timed since: a later event stands for it
            del self._copies[device]
            self._reshare()
            self._apply(self.scheduler.swap_done(device) if kind == SWAP_DONE else self.scheduler.prefetched(device))
            return
        started = self._running.get(device)
        if started is None or t != started.finish_at:
            return  # re-timed since: a later FINISH event stands for it
        del self._running[device]
        self._reshare()
        for other in self._shares.pop(device, ()):  # a split run's other devices are done with it
            self.devices[other].busy_s += t - started.began
            self._apply(self.scheduler.finished(other))
        self.devices[device].busy_s += t - started.began
        fn_index = self._index[started.run.function]
        tally = self.tallies[fn_index]
        fn = self.functions[fn_index]
        slo = fn.slo_ms
        for r in started.run.rids:
            fi, arrived, idle = self._arrival.pop(r)
            latency = (t - arrived) * 1e3  # from its arrival at the gateway, parse included
            tally.latencies_ms.append(latency)
            if self.served is not None:
                o = self.offset
                self.served.append(
                    (fi, arrived - o, started.began - o, t - o, started.exec_ms, started.run.load is not None)
                )
            if latency > slo:
                tally.miss(late_reason(started, started.wait_ms[r], idle))
        tally.last_served = t
        self._apply(self.scheduler.finished(device, exec_ms=started.exec_ms))

    def _apply(self, decisions: list) -> None:
        for d in decisions:
            if isinstance(d, Run):
                self._start(d)
            elif isinstance(d, Prefetch):
                self._start_prefetch(d)
            elif isinstance(d, Evict):
                self.devices[d.device].evictions += 1
            elif isinstance(d, Reject):
                fi, _, _ = self._arrival.pop(d.rid)
                self.tallies[fi].dropped += 1
                self.tallies[fi].miss("shed" if d.reason == "overloaded" else "dropped")

    def _exec1(self, m: ModelProfile) -> float:
        """Batch-1 execution time: the native baseline runs without remoting, at its own speed."""
        return m.native_exec_ms if self.scheduler.policy.static and m.native_exec_ms else m.exec_ms

    def _start(self, run: Run) -> None:
        topo = self.profile.topology
        pairs = bool(self.profile.interference_pairs)
        fi = self._index[run.function]
        fn = self.functions[fi]
        m = fn.model
        tally = self.devices[run.device]
        tally.evictions += len(run.evict)
        transfer_ms, slow = 0.0, 1.0
        ahead_ms = 0.0  # the part of a prefetch still under way when the run starts
        if run.load is not None and run.shares:
            # A split cold start: every device copies its share at once; the stages run one after
            # another, so the request waits for the slowest share, plus a hand-over per cut.
            sizes = share_sizes(m.nbytes, len(run.devices))
            slowest = 0.0
            for i, (device, nbytes) in enumerate(zip(run.devices, sizes, strict=True)):
                ms, sl = self._transfer(device, None, fi, run.model_id, SWAP_DONE, nbytes=nbytes, count=i == 0)
                slowest = max(slowest, ms * sl)
            for share in run.shares:
                self.devices[share.device].evictions += len(share.evict)
            transfer_ms = slowest + HANDOFF_MS * len(run.shares)
            self._shares[run.device] = run.devices[1:]
            self.tallies[fi].splits += 1
        elif run.load is not None:
            transfer_ms, slow = self._transfer(run.device, run.load.peer, fi, run.model_id, SWAP_DONE)
        elif (ahead := self._copies.get(run.device)) is not None and ahead.kind == PREFETCH_DONE:
            if ahead.model_id == run.model_id:
                ahead_ms = max(0.0, (ahead.finish_at - self.now) * 1e3)
        m1 = self._exec1(m)
        exec_ms = ExecProfile(m1, m.batch_exec_ms, m.max_batch).at(len(run.rids))
        swapping_near = any(n in self._copies for n in topo.neighbours(run.device))
        if not pairs and m.heavy and swapping_near:
            exec_ms *= topo.interference
        if self.drift:
            exec_ms *= self.drift[min(len(self.drift) - 1, int((self.now - self.offset) // 60))]
        if m.exec_quantiles:  # the spread measured: skewed, its mean above the median exec_ms
            exec_ms *= m.jitter(self._rng.random())
        elif self.profile.exec_jitter:
            exec_ms *= math.exp(self._rng.gauss(0, self.profile.exec_jitter))
        overlap = topo.pipeline_overlap if m.pipeline_overlap is None else m.pipeline_overlap
        alone_ms = self.cost.service_ms(transfer_ms, exec_ms, overlap, m.swap_latency_ms)
        if ahead_ms:  # execution waits for the groups the prefetch has not brought in yet
            alone_ms = pipelined(ahead_ms, exec_ms, overlap)
        total_ms = alone_ms * slow
        tally.runs += 1
        waits = {r: (self.now - self._arrival[r][1]) * 1e3 for r in run.rids}
        hot = run.load is not None and self.now - self.tallies[fi].last_served < HOT_S
        end = self.now + total_ms / 1e3
        self._running[run.device] = _Started(
            run, m, exec_ms, waits, total_ms - exec_ms, total_ms - alone_ms, hot, self.now, total_ms, end, self.now
        )
        self._push(end, FINISH, run.device)
        self._reshare()

    def _start_prefetch(self, p: Prefetch) -> None:
        fi = self._index[p.function]
        m = self.functions[fi].model
        self.devices[p.device].evictions += len(p.evict)
        nbytes = None
        if p.load.rest and p.load.share is not None:  # a split's consolidation: the image after its first share
            nbytes = rest_bytes(self.functions[fi].model.nbytes, p.load.share[1])
        self._transfer(
            p.device,
            p.load.peer,
            fi,
            p.model_id,
            PREFETCH_DONE,
            self.cost.swap_latency_ms(m.swap_latency_ms),
            nbytes=nbytes,
            count=not p.load.rest,
        )
        self._reshare()

    def _transfer(
        self,
        device: int,
        peer: int | None,
        fi: int,
        model_id: str,
        event: int,
        extra_ms: float = 0.0,
        nbytes: int | None = None,
        count: bool = True,
    ) -> tuple[float, float]:
        """Start a copy of function `fi`'s model (or `nbytes` of it: a split's share) onto `device`,
        ended by an `event` (the next _reshare sets its share of the cores): (its time alone in ms,
        its slowdown). `count`: a cold start of the function, for its tally."""
        topo = self.profile.topology
        pairs = bool(self.profile.interference_pairs)
        m = self.functions[fi].model
        nbytes = m.nbytes if nbytes is None else nbytes
        active: dict[int, int] = {}
        for copy in [] if pairs else self._copies.values():
            for s in copy.through:
                active[s] = active.get(s, 0) + 1
        transfer_ms = self.cost.transfer_ms(nbytes, device, peer, active)
        kind = "host" if peer is None else "peer"
        tally = self.devices[device]
        tally.swaps[kind] += 1
        tally.swap_bytes[kind] += nbytes
        if count:
            self.tallies[fi].swaps[kind] += 1
        through = {topo.switches[device]}
        if peer is not None:
            if topo.direct(device, peer):
                through = set()
            else:
                through.add(topo.switches[peer])
        slow = 1.0
        if pairs and through:
            for n in topo.neighbours(device):
                if n in self._copies and self._copies[n].through:
                    slow = max(slow, self.profile.slowdown(m, self._copies[n].model))
        ms = slow * transfer_ms + extra_ms
        copy = self._copies[device] = _Copy(event, m, model_id, through, ms, self.now + ms / 1e3, self.now)
        self._push(copy.finish_at, event, device)
        return transfer_ms, slow

    def _push(self, t: float, kind: int, device: int) -> None:
        heapq.heappush(self._events, (t, next(self._seq), kind, device))


def late_reason(started: _Started, wait_ms: float, idle_at_arrival: bool) -> str:
    """The largest part of a late request's latency beyond its own execution (see LATE_REASONS)."""
    swap_ms = started.swap_ms - started.interference_ms
    parts = {"wait": wait_ms, "swap": swap_ms, "swap_interference": started.interference_ms}
    worst = max(parts, key=lambda k: parts[k])
    if parts[worst] <= 0:
        return "exec"
    if worst == "wait":
        return "queued_held" if idle_at_arrival else "queued_busy"
    if worst == "swap" and started.evicted_hot:
        return "swap_evicted_hot"
    return worst
