"""The scheduling policy as one pure object: events in, decisions out.

No sockets, no asyncio, no torch; the clock is injected. The gateway's dispatcher
drives it with real workers, the simulator with a discrete-event clock, the tests
with a fake one. Events: function_added / function_removed, arrived, swap_done,
finished, cancel, device_lost / device_added. Decisions: Run (a batch of one
function's requests on a device, after evicting some models and loading the model
from the host or a peer), Evict, Reject.

The full policy ("torpor") follows Torpor's Algorithm 1, one inference at a time
per device:
1. run on an idle device that holds the model;
2. else copy it from a device that holds it (busy or not) to an idle one over the
   fastest link, when that beats the host;
3. else swap it in from host memory onto an idle device, preferring one whose
   PCIe-switch neighbours are not swapping, then one whose neighbours swap only
   light models, then the one that must evict the fewest bytes.
Requests that find no device wait in their function's queue. Functions are served
by urgency (gateway.urgency): earliest deadline first, a function with misses to
spare in its SLO window yielding a little to those without, a function far behind
its SLO (RRC above give_up) after those that are not, and functions whose next
request can no longer make its deadline after all (defer_late). Order "rrc" is
Torpor's classes instead (see gateway.slo for RRC): behind their SLO but within reach
(tuned threshold < RRC <= give_up) first, then those meeting it, then those too far
behind. `drop_late` functions have requests that can
no longer meet their SLO rejected early (Clockwork's rule). Waiting requests of one
function run as one batch, up to max_batch_size, while every one stays within its SLO.
Eviction happens only when a model does not fit, never of one executing, loading or
being copied from; light models and duplicates go first, then heavy models by what
their swap-in costs, least recently used among equals; the only copy of a model with
requests waiting goes last. A duplicate is never made by evicting another model's
only copy (Torpor §5.4: one replica per model when memory is full): the request
waits for the holder.

Baselines are the same object with parts off: "simpleswap" (FIFO, a random idle
device, host swaps, LRU eviction) and "native" (each function's model stays on one
device assigned at deploy while memory lasts; others are not served).
"""

from __future__ import annotations

import random
from collections.abc import Callable

from gateway import paradegree, urgency
from gateway.admission import Admission
from gateway.costmodel import CostModel, ExecProfile, Topology
from gateway.decisions import POLICIES, Decision, Evict, FunctionInfo, Load, Policy, Prefetch, Reject, Run, Share
from gateway.devicestate import DeviceState, FunctionState, Plan, Resident, Transfer, Waiting
from gateway.eviction import cheapest_window
from gateway.slo import PriorityTuner, SloWindow
from shared.arena import ArenaLayout, align_up

LARGE_SHARE = 32  # a model of at least 1/32 of a device's memory is "large": placed from the arena's top
PREFETCH_BACKOFF_S = 5.0  # after a failed prefetch of a function's model, none for this long
WAITING_PRICE = 1e6  # eviction price of the only copy of a model with requests waiting: last resort

__all__ = [
    "POLICIES",
    "Decision",
    "Evict",
    "FunctionInfo",
    "Load",
    "Policy",
    "Prefetch",
    "Reject",
    "Run",
    "Scheduler",
    "Share",
]


class Scheduler:
    def __init__(
        self,
        topology: Topology | list[int],
        clock: Callable[[], float],
        policy: str | Policy = "torpor",
        seed: int = 0,
        window_s: float = 600.0,
        preload: bool = True,
    ) -> None:
        self.topology = topology if isinstance(topology, Topology) else Topology.flat(topology)
        self.cost = CostModel(self.topology)
        self.policy = POLICIES[policy] if isinstance(policy, str) else policy
        self.clock = clock
        self.devices = [DeviceState(i, ArenaLayout(c)) for i, c in enumerate(self.topology.capacities)]
        self.functions: dict[str, FunctionState] = {}
        self._by_model: dict[str, FunctionState] = {}
        self._pending: set[str] = set()  # functions with requests waiting
        self._window_s = window_s
        self.tuner = PriorityTuner()
        self._rng = random.Random(seed)
        self._inflight: dict[int, list[Waiting]] = {}  # per device, for latencies at finish
        self._pinned: set[int] = set()  # devices whose running copy pins its peer source
        self._copies: dict[str, int] = {}  # model -> devices holding it (loaded or loading)
        # Victims per (device, bytes) within one dispatch pass: many functions share a model size,
        # and nothing on a device changes between two of its plans until a decision is committed.
        self._victim_cache: dict[tuple[int, int], list[str] | None] = {}
        self._transfer_cache: dict[tuple[int, int], float] = {}  # (bytes, device) -> unshared host copy ms
        self._reswap_cache: dict[tuple[str, int], float] = {}  # (model, device) -> _reswap_ms, until re-profiled
        # Functions whose model no device holds, in deploy order, and whether some device may
        # have room for one: free device memory is filled with them ahead of their requests.
        self._unplaced: dict[str, None] = {}
        self._room = False
        self.preload = preload and self.policy.prefetch
        u = self.policy.admit_utilization
        self.admission = Admission(u) if u is not None and not self.policy.static else None

    def __repr__(self) -> str:
        busy = sum(d.running is not None for d in self.devices)
        offline = sum(not d.online for d in self.devices)
        return (
            f"<Scheduler policy={self.policy.name} devices={len(self.devices)} busy={busy} offline={offline} "
            f"functions={len(self.functions)} queued={self.queued()}>"
        )

    # -- events ----------------------------------------------------------------
    def function_added(self, info: FunctionInfo) -> list[Decision]:
        if info.name in self.functions:
            self.function_removed(info.name)
        exec_profile = ExecProfile(info.exec_ms, info.batch_exec_ms, info.max_batch_size)
        state = FunctionState(info, exec_profile, SloWindow(info.slo_ms, info.percentile, self._window_s))
        self.functions[info.name] = state
        self._by_model[info.model_id] = state
        if self.admission is not None:
            self.admission.added(info.name, self.clock(), info.exec_ms)
        if self.policy.static:
            self._assign_home(state)
            return []
        self._unplaced[info.name] = None
        self._room = True  # filled at the next dispatch (settle() asks for one), once its tier is known
        return []

    def settle(self) -> list[Decision]:
        """What to do with no event to answer: fill free device memory with deployed models."""
        return self._dispatch()

    def function_removed(self, name: str, reason: str = "removed") -> list[Decision]:
        """`reason`: what its waiting requests are rejected with ("removed", or "unloaded")."""
        state = self.functions.pop(name, None)
        if state is None:
            return []
        self._pending.discard(name)
        self._unplaced.pop(name, None)
        self._room = True
        if self.admission is not None:
            self.admission.removed(name)
        self._by_model.pop(state.info.model_id, None)
        decisions: list[Decision] = [Reject(w.rid, reason) for w in state.queue]
        model = state.info.model_id
        for d in self.devices:
            r = d.resident.get(model)
            if r is None or (d.running is not None and d.running.model_id == model) or r.pins:
                continue  # not here, or in use: finished() evicts it when it is free
            if self.policy.static and r.loading:
                self._drop(d, model)  # a native reservation never filled: nothing on the device
            elif not r.loading:
                self._drop(d, model)
                decisions.append(Evict(d.index, model))
        return decisions

    def arrived(self, rid: int, function: str) -> list[Decision]:
        state = self.functions.get(function)
        if state is None:
            return [Reject(rid, "removed")]
        now = self.clock()
        if self.policy.static and state.home is None:
            state.slo.record(now, None)
            return [Reject(rid, "no device")]
        admission = self.admission
        if admission is not None:
            admission.arrived(function, now)
            if admission.due(now):
                online = sum(d.online for d in self.devices)
                functions = self.functions
                shed = len(admission.shed)
                admission.review(
                    now, online, lambda n: functions[n].exec.at(1), lambda n: functions[n].slo.rrc(now) > 0
                )
                if len(admission.shed) < shed:
                    self._room = True  # a readmitted function's model may be preloaded again
            if not admission.admits(function):
                state.slo.record(now, None)
                return [Reject(rid, "overloaded")]
        state.queue.append(Waiting(rid, now, now + state.info.slo_ms / 1e3))
        self._pending.add(function)
        return self._dispatch()

    def cancel(self, rid: int, function: str) -> bool:
        """Take a waiting request out of its queue (its deadline passed); False if it already runs."""
        state = self.functions.get(function)
        if state is None:
            return False
        for w in state.queue:
            if w.rid == rid:
                state.queue.remove(w)
                if not state.queue:
                    self._pending.discard(function)
                state.slo.record(self.clock(), None)
                return True
        return False

    def host_tier(self, function: str, tier: str) -> list[Decision]:
        """The service moved a function's host image: "host" (in memory) or "disk" (file only)."""
        state = self.functions.get(function)
        if state is None:
            return []
        state.host_tier = tier
        return self._dispatch()

    def host_tiers(self) -> dict[str, str]:
        return {name: s.host_tier for name, s in self.functions.items()}

    def host_pinned(self) -> set[str]:
        """Functions whose host image a device is copying from (or filling) right now."""
        return {f for d in self.devices if (f := d.transfer_function()) is not None and d.transfer_peer() is None}

    def swap_done(self, device: int, ok: bool = True) -> list[Decision]:
        """The running model is now wholly on the device: it may serve as a peer source."""
        d = self.devices[device]
        run = d.running
        if run is not None and run.device != device:
            return []  # a share of a split cold start: only the run's end frees it
        if run is not None and run.load is not None and run.model_id in d.resident:
            if ok and run.load.share is None:  # a split's first share is not the whole model yet
                d.resident[run.model_id].loading = False
            self._unpin(run)
        decisions: list[Decision] = []
        if run is not None and run.load is not None and run.load.fill:
            decisions = self._filled(run.function, ok)
        return decisions

    def prefetched(self, device: int, ok: bool = True, model_id: str | None = None) -> list[Decision]:
        """The device's prefetch ended: the model is wholly on it (or, failed, not at all).

        `model_id` guards against a late report of a prefetch the device lost with its worker."""
        d = self.devices[device]
        t = d.prefetch
        if t is None or (model_id is not None and t.model_id != model_id):
            return self._dispatch()
        d.prefetch = None
        decisions: list[Decision] = []
        self._release_source(t.peer, t.model_id)
        r = d.resident.get(t.model_id)
        running = d.running is not None and d.running.model_id == t.model_id
        state = self.functions.get(t.function)
        if r is None:
            pass
        elif not ok:
            self._drop(d, t.model_id)  # the worker has let go of the slice; a run on it fails with the swap
            self._room = True
            if state is not None:  # its request swaps it in itself; no copy ahead that may fail again
                state.no_prefetch_until = self.clock() + PREFETCH_BACKOFF_S
        elif state is not None and state.info.model_id == t.model_id:
            r.loading = False
        elif not running:  # removed while it was copied in (if it runs, finished() evicts it)
            self._drop(d, t.model_id)
            decisions.append(Evict(device, t.model_id))
        return decisions + self._dispatch()

    def _filled(self, function: str, ok: bool) -> list[Decision]:
        """A fill from disk ended: the image is in host memory now, or (failed) still only on disk."""
        state = self.functions.get(function)
        if state is None or state.host_tier != "filling":
            return []
        state.host_tier = "host" if ok else "disk"
        return self._dispatch()

    def finished(
        self, device: int, loaded_ok: bool = True, exec_ms: float | None = None, failed: bool = False
    ) -> list[Decision]:
        """The device finished its Run (successfully or not) and is idle again."""
        d = self.devices[device]
        run, d.running = d.running, None
        decisions: list[Decision] = []
        if run is None:
            return self._dispatch()
        if run.device != device:  # a share of a split cold start: done with the run, evicted
            if d.share is not None:
                d.layout.release(d.share)
                d.share = None
            self._room = True
            return [Evict(device, run.model_id), *self._dispatch()]
        now = self.clock()
        split = run.load is not None and run.load.share is not None
        if self.admission is not None and not failed:
            # A split run held each of its devices for its whole time.
            self.admission.served(run.function, (now - d.started) * 1e3 * len(run.devices), len(run.rids))
        self._unpin(run)
        if run.load is not None and run.load.fill:
            decisions += self._filled(run.function, loaded_ok)  # if swap_done never came
        if not loaded_ok:
            self._drop(d, run.model_id)
            self._room = True
        elif run.model_id in d.resident:
            d.resident[run.model_id].loading = split  # a split's first share: consolidated below
            d.resident[run.model_id].last_used = now
            d.resident.move_to_end(run.model_id)
        state = self.functions.get(run.function)
        if state is None or state.info.model_id != run.model_id:
            if run.model_id in d.resident:  # removed while it ran: evict now it is free
                self._drop(d, run.model_id)
                decisions.append(Evict(device, run.model_id))
        else:
            started = {w.rid: w for w in self._inflight.pop(device, [])}
            for rid in run.rids:
                w = started.get(rid)
                latency = None if failed or w is None else (now - w.arrived) * 1e3
                state.slo.record(now, latency)
            if exec_ms is not None and not failed:
                state.exec.observe(len(run.rids), exec_ms)
                for e in self.devices:
                    self._reswap_cache.pop((run.model_id, e.index), None)
            if split and loaded_ok and run.model_id in d.resident:
                decisions.append(self._consolidate(d, state, run))
        return decisions + self._dispatch()

    def device_lost(self, device: int) -> list[Decision]:
        d = self.devices[device]
        run, d.online, d.running = d.running, False, None
        decisions: list[Decision] = []
        if run is not None and run.shares:  # a split cold start fails with any of its devices
            for e in self.devices:
                if e.running is run:
                    decisions += self.finished(e.index, loaded_ok=False, failed=True)
        if d.share is not None:
            d.layout.release(d.share)
            d.share = None
        if d.prefetch is not None:
            self._release_source(d.prefetch.peer, d.prefetch.model_id)
            d.prefetch = None
        if run is not None:
            self._unpin(run)
            if run.load is not None and run.load.fill:
                self._filled(run.function, False)  # the half-read image is read again next time
        self._inflight.pop(device, None)
        for model_id in list(d.resident):
            self._drop(d, model_id)
        for state in self.functions.values():
            if state.home == device:  # native: the model comes back with the device
                state.home = None
        return decisions

    def device_added(self, device: int) -> list[Decision]:
        self.devices[device].online = True
        self._room = True
        if self.policy.static:
            for state in self.functions.values():
                if state.home is None:
                    self._assign_home(state)
        return self._dispatch()

    # -- queries ---------------------------------------------------------------
    def residency(self, model_id: str) -> list[int]:
        return [d.index for d in self.devices if model_id in d.resident and not self._reserved_only(d, model_id)]

    def info(self, function: str) -> FunctionInfo:
        return self.functions[function].info

    def has(self, function: str, model_id: str) -> bool:
        """The function is deployed with this model version."""
        state = self.functions.get(function)
        return state is not None and state.info.model_id == model_id

    def queue_depth(self, function: str) -> int:
        state = self.functions.get(function)
        return len(state.queue) if state else 0

    def queued(self) -> int:
        return sum(len(self.functions[n].queue) for n in self._pending)

    def admits(self, function: str) -> bool:
        """Whether admission serves the function now (False: it is shed, the node is overloaded)."""
        return self.admission is None or self.admission.admits(function)

    def rrc(self, function: str) -> float:
        return self.functions[function].slo.rrc(self.clock())

    def predict(self, function: str) -> dict[str, float]:
        """What a request arriving now would cost (ms), by the cost model: for reports."""
        state = self.functions[function]
        if not self.admits(function):  # answered 503 at once: a cluster forwards it to another holder
            inf = float("inf")
            return {"wait_ms": inf, "transfer_ms": 0.0, "exec_ms": state.exec.at(1), "completion_ms": inf}
        now = self.clock()
        self._victim_cache.clear()
        plan = self._plan(state, dry=True)
        if plan is not None:
            wait = 0.0
            service = self.cost.service_ms(plan.transfer_ms, self._exec_ms(state, plan.device, 1))
            transfer = plan.transfer_ms
        else:
            # No device for it now: it waits for the first device to finish, behind its queue.
            ends = [d.started + d.running.predicted_ms / 1e3 for d in self.devices if d.running and d.online]
            online = max(1, sum(d.online for d in self.devices))
            ahead = len(state.queue) * state.exec.at(1) / online
            wait = max(0.0, (min(ends) - now) * 1e3) + ahead if ends else float("inf")
            transfer = 0.0 if self.residency(state.info.model_id) else self._host_ms(state, 0)
            service = self.cost.service_ms(transfer, state.exec.at(1))
        return {
            "wait_ms": wait,
            "transfer_ms": transfer,
            "exec_ms": state.exec.at(1),
            "completion_ms": wait + service,
        }

    # -- policy ----------------------------------------------------------------
    def _dispatch(self) -> list[Decision]:
        decisions: list[Decision] = []
        if self.policy.slo_order and self.policy.order == "rrc":
            now = self.clock()
            if self.tuner.due(now):
                self.tuner.tune(now, sum(s.slo.meeting(now) for s in self.functions.values()))
        self._victim_cache.clear()
        while self._pending and any(d.idle for d in self.devices):
            placed = False
            order = self._order()
            for i, name in enumerate(order):
                state = self.functions[name]
                if not state.queue:
                    continue  # emptied in this pass: its late requests dropped when warm first chose it
                plan = self._plan(state)
                if plan is None:
                    continue
                if self.policy.warm_first:
                    other = urgency.warm_elsewhere(self, state, plan, order[i + 1 :])
                    if other is not None:
                        state = self.functions[other]
                        plan = self._plan(state)
                        assert plan is not None
                out = self._serve(state, plan)
                decisions.extend(out)
                if out and isinstance(out[-1], Run):
                    placed = True
                    break
            if not placed:
                break
        if self.policy.prefetch and self._pending:
            decisions.extend(self._prefetch())
        elif self.preload and self._room:
            decisions.extend(self._preload())
        return decisions

    def _preload(self) -> list[Decision]:
        """Nothing waits: fill free device memory with models no device holds, in deploy order.

        Only room that is free now is used (nothing is evicted for a model nobody asked for),
        one copy per idle copy engine; a function deployed while there is room is then warm
        from its first request.
        """
        holes = {d.index: d.layout.largest_hole() for d in self.devices if d.online}
        engines = {d.index for d in self.devices if d.online and not d.swapping}
        decisions: list[Decision] = []
        later = False  # a model fits a device whose copy engine is busy now
        shed = self.admission.shed if self.admission is not None else frozenset()
        for name in list(self._unplaced):
            if not engines:
                later = True
                break
            if name in shed:
                continue  # its requests are refused: its model would only take a hot one's room
            state = self.functions[name]
            need = align_up(state.info.nbytes)
            ready = state.host_tier == "host" and self.clock() >= state.no_prefetch_until
            fits = [i for i, hole in holes.items() if hole >= need and ready]
            now = [i for i in fits if i in engines]
            if now:
                i = max(now, key=lambda i: (holes[i], -i))
                decisions.append(self._start_prefetch(self.devices[i], state, []))
                engines.discard(i)
                holes[i] = self.devices[i].layout.largest_hole()
            later = later or len(fits) > len(now)
        self._room = bool(decisions) or later  # else nothing fits: look again once memory is freed
        return decisions

    def _prefetch(self) -> list[Decision]:
        """Give busy devices' idle copy engines the models of the most urgent waiting requests.

        Only a model held by no device is fetched (a resident one is waited for or copied
        from its holder), onto the busy device expected to finish first; the request is not
        bound to it: when a device frees, it is placed as usual, and this device is then a
        warm one (or one whose copy is under way).
        """
        engines = [d for d in self.devices if d.online and d.running is not None and not d.swapping]
        if not engines:
            return []
        decisions: list[Decision] = []
        engines.sort(key=lambda d: (self._remaining_ms(d), d.index))
        now = self.clock()
        for name in self._order():
            state = self.functions[name]
            model = state.info.model_id
            if self._copies.get(model) or state.host_tier != "host" or now < state.no_prefetch_until:
                continue  # resident somewhere already; disk-tier images take the request's own path
            if self.policy.defer_late and now + state.exec.at(1) / 1e3 > state.queue[0].deadline:
                break  # the rest of the order cannot make their deadlines either: keep the memory
            for d in engines:
                victims = self._victims(d, state)
                if victims is None or any(self._waited_for(v) for v in victims):
                    continue  # never evict ahead of time a model whose requests wait for it
                decisions.append(self._start_prefetch(d, state, victims))
                engines.remove(d)
                break
            if not engines:
                break
        return decisions

    def _costly(self, model_id: str) -> bool:
        """Whether evicting this (only) copy is too costly for a duplicate of another model."""
        if self.policy.duplicates == "never":
            return True
        owner = self._by_model.get(model_id)
        return owner is not None and owner.info.heavy

    def _large(self, d: DeviceState, nbytes: int) -> bool:
        """Placed from the top of the arena (see ArenaLayout.allocate)."""
        return self.policy.segregate and nbytes >= d.layout.capacity // LARGE_SHARE

    def _waited_for(self, model_id: str) -> bool:
        """The only copy of a model whose function has requests waiting."""
        owner = self._by_model.get(model_id)
        return owner is not None and bool(owner.queue) and self._copies.get(model_id, 0) <= 1

    def _start_prefetch(self, d: DeviceState, state: FunctionState, victims: list[str]) -> Prefetch:
        info, now = state.info, self.clock()
        for v in victims:
            self._drop(d, v)
        s = d.layout.allocate(info.nbytes, self._large(d, info.nbytes))
        assert s is not None, "victims were chosen to make room"
        self._add(d, Resident(info.model_id, s, now, loading=True))
        ms = self._host_ms(state, d.index)
        d.prefetch = Transfer(info.name, info.model_id, None, now, ms)
        self._victim_cache.clear()
        return Prefetch(d.index, info.name, info.model_id, tuple(victims), Load(s), ms)

    def _order(self) -> list[str]:
        return urgency.order(self)

    def _serve(self, state: FunctionState, plan: Plan) -> list[Decision]:
        """Place the function's next request(s), or drop the ones that can no longer make it."""
        now = self.clock()
        decisions: list[Decision] = []
        queue = state.queue
        if self.policy.drop_late and state.info.drop_late:
            service1 = self._service_ms(state, plan, 1)
            while queue and now + service1 / 1e3 > queue[0].deadline:
                self._victim_cache.clear()  # an emptied queue changes its model's eviction price
                w = queue.popleft()
                state.slo.record(now, None)
                decisions.append(Reject(w.rid, "late"))
            if not queue:
                self._pending.discard(state.info.name)
                return decisions
        batch = [queue[0]]
        if self.policy.batching:
            limit = min(state.info.max_batch_size, len(queue))
            earliest = queue[0].deadline  # of the batch so far: a running minimum, not a rescan per step
            while len(batch) < limit:
                finish = now + self._service_ms(state, plan, len(batch) + 1) / 1e3
                nxt = queue[len(batch)]
                earliest = min(earliest, nxt.deadline)
                if finish > earliest:
                    break
                batch.append(nxt)
        for _ in batch:
            queue.popleft()
        if not queue:
            self._pending.discard(state.info.name)
        decisions.append(self._commit(state, plan, batch))
        return decisions

    def _plan(self, state: FunctionState, dry: bool = False) -> Plan | None:
        model = state.info.model_id
        idle = [d for d in self.devices if d.idle]
        if self.policy.static:
            home = self.devices[state.home] if state.home is not None else None
            if home is None or not home.idle:
                return None
            cold = home.resident[model].loading
            return Plan(home, [], self._host_ms(state, home.index) if cold else 0.0, None, cold)
        warm = [d for d in idle if model in d.resident and not d.resident[model].loading]
        if warm:
            return Plan(min(warm, key=lambda d: (self._interfered(d), d.index)), [], 0.0, None, False)
        fetched = next((d for d in idle if d.prefetch is not None and d.prefetch.model_id == model), None)
        if fetched is not None:  # its copy engine is bringing the model in: run as the groups land
            remaining = max(0.0, (fetched.prefetch.ends - self.clock()) * 1e3)  # type: ignore[union-attr]
            return Plan(fetched, [], remaining, None, False)
        idle = [d for d in idle if d.prefetch is None]  # a copy engine busy with another model
        sources = [
            d for d in self.devices if d.online and model in d.resident and not d.resident[model].loading
        ] * self.policy.peer_copy
        active = self._active_transfers()
        options: list[tuple[tuple[float, ...], Plan]] = []
        for d in idle:
            victims = self._victims(d, state)
            if victims is None:
                continue
            freed = float(sum(d.resident[v].slice.size for v in victims))
            host_ms = self._host_ms(state, d.index, active)
            best = min(
                ((self.cost.transfer_ms(state.info.nbytes, d.index, s.index, active), s.index) for s in sources),
                default=None,
            )
            if best is not None and (best[0] <= host_ms or state.host_tier == "filling"):
                key = (0.0, best[0], freed, d.index)  # a peer copy, over the fastest link
                options.append((key, Plan(d, victims, best[0], best[1], True)))
            elif state.host_tier == "filling":
                continue  # another device is reading the image from disk: wait for it to land
            else:
                key = (1.0, float(self._neighbour_rank(d)), freed, d.index)
                options.append((key, Plan(d, victims, host_ms, None, True)))
        if not options:
            return None
        if self.policy.random_target:
            return self._rng.choice(options)[1] if not dry else options[0][1]
        plan = min(options, key=lambda o: o[0])[1]
        if self.policy.wait_for_warm and not dry:
            # A busy device that holds the model may finish sooner than a copy would: then
            # the request waits for it, and no other model is evicted for a duplicate.
            waits = [self._remaining_ms(d) for d in sources if not d.idle]
            waits += [
                max(self._remaining_ms(d), (d.prefetch.ends - self.clock()) * 1e3)
                for d in self.devices
                if d.prefetch is not None and d.prefetch.model_id == model and not d.idle
            ]
            wait = min(waits, default=None)
            if wait is not None:
                exec_ms = state.exec.at(1)
                moved = self.cost.service_ms(plan.transfer_ms, exec_ms)
                if wait + exec_ms <= moved:
                    return None
                # A duplicate that evicts another model's only copy costs that model a swap later:
                # only a light one's (its swap hides behind its execution), or none at all ("never",
                # Torpor §5.4's one replica per model when memory is full).
                if any(self._copies.get(v, 0) <= 1 and self._costly(v) for v in plan.victims):
                    return None
        if self.policy.split and not dry and plan.cold and plan.source is None and state.host_tier == "host":
            return self._split(state, plan, idle)
        return plan

    def _split(self, state: FunctionState, plan: Plan, idle: list[DeviceState]) -> Plan:
        """A cold swap-in from the host, split across idle devices when one device would miss the SLO.

        ParaServe's pipeline-parallel cold start: each of k devices copies 1/k of the image at
        once over its own switch's uplink, the request runs stage by stage across them, and the
        model is consolidated onto the first (gateway.paradegree chooses k). Another device takes
        a share only where it has room without evicting a model some request waits for or a
        heavy model's only copy: a split must not trade one cold start for others.
        """
        info = state.info
        wait_ms = max(0.0, (self.clock() - state.queue[0].arrived) * 1e3)
        if wait_ms + self._service_ms(state, plan, 1) <= info.slo_ms:
            return plan  # one device makes it (as paradegree.choose would find, without the devices)
        others: dict[int, DeviceState] = {}
        for e in idle:
            if e is plan.device:
                continue
            victims = self._victims(e, state, paradegree.share_sizes(info.nbytes, 2, info.cut(2))[1])
            if victims is not None and not any(self._dear(v) for v in victims):
                others[e.index] = e
        if not others:
            return plan
        active = self._active_transfers()
        first = plan.device.index
        exec_ms = self._exec_ms(state, plan.device, 1)
        degree = paradegree.choose(
            self.cost,
            info.nbytes,
            exec_ms,
            [first, *others],
            info.slo_ms,
            wait_ms,
            active=active,
            first=first,
            cuts=info.stages,
        )
        if degree.k == 1:
            return plan
        cut = info.cut(degree.k)
        sizes = paradegree.share_sizes(info.nbytes, degree.k, cut)
        shares = []
        for i, share in zip(degree.devices[1:], sizes[1:], strict=True):
            victims = self._victims(others[i], state, share)
            if victims is None:  # a share of an uneven cut larger than half the model
                return plan
            shares.append((others[i], victims))
        transfer = paradegree.share_transfer_ms(self.cost, info.nbytes, list(degree.devices), active, cut)
        return Plan(plan.device, plan.victims, transfer, None, True, shares)

    def _dear(self, model_id: str) -> bool:
        """Evicting it for a split's share would cost its function a cold start that matters."""
        return self._waited_for(model_id) or (self._copies.get(model_id, 0) <= 1 and self._costly(model_id))

    def _consolidate(self, d: DeviceState, state: FunctionState, run: Run) -> Prefetch:
        """After a split cold start: the rest of the image onto its first device, by its copy engine."""
        assert run.load is not None and run.load.share is not None
        r = d.resident[run.model_id]
        k = run.load.share[1]
        rest = paradegree.rest_bytes(state.info.nbytes, k, state.info.cut(k))
        ms = self.cost.transfer_ms(rest, d.index, None, self._active_transfers())
        d.prefetch = Transfer(state.info.name, run.model_id, None, self.clock(), ms)
        return Prefetch(d.index, state.info.name, run.model_id, (), Load(r.slice, share=run.load.share, rest=True), ms)

    def _remaining_ms(self, d: DeviceState) -> float:
        """Predicted time until the device's current run ends."""
        if d.running is None:
            return 0.0
        return max(0.0, d.started * 1e3 + d.running.predicted_ms - self.clock() * 1e3)

    def _neighbour_rank(self, d: DeviceState) -> int:
        """0: no neighbour on its PCIe switch swaps; 1: they swap only light models; 2: a heavy one."""
        if not self.policy.neighbour_aware:
            return 0
        rank = 0
        for n in self.topology.neighbours(d.index):
            function = self.devices[n].transfer_function()
            if function is not None:
                state = self.functions.get(function)
                rank = max(rank, 2 if state is None or state.info.heavy else 1)
        return rank

    def _interfered(self, d: DeviceState) -> bool:
        return any(self.devices[n].swapping for n in self.topology.neighbours(d.index))

    def _active_transfers(self) -> dict[int, int]:
        active: dict[int, int] = {}
        for d in self.devices:
            if d.swapping:
                switches = {self.topology.switches[d.index]}
                peer = d.transfer_peer()
                if peer is not None:
                    switches.add(self.topology.switches[peer])
                for s in switches:
                    active[s] = active.get(s, 0) + 1
        return active

    def _host_ms(self, state: FunctionState, device: int, active: dict[int, int] | None = None) -> float:
        ms = self.cost.transfer_ms(
            state.info.nbytes, device, None, self._active_transfers() if active is None else active
        )
        if state.host_tier == "disk":  # read from disk, pipelined with the copy: the slower one sets the pace
            ms = max(ms, self.cost.disk_ms(state.info.nbytes))
        return ms

    def _exec_ms(self, state: FunctionState, d: DeviceState, batch: int) -> float:
        ms = state.exec.at(batch)
        if state.info.heavy and self._interfered(d):
            ms *= self.topology.interference
        return ms

    def _service_ms(self, state: FunctionState, plan: Plan, batch: int) -> float:
        handoffs = len(plan.shares) * paradegree.HANDOFF_MS  # a split's values crossing each cut
        return self.cost.service_ms(plan.transfer_ms, self._exec_ms(state, plan.device, batch)) + handoffs

    def _victims(self, d: DeviceState, state: FunctionState, nbytes: int | None = None) -> list[str] | None:
        """The cheapest run of adjacent models to evict from `d` so the model fits, or None.

        Price of a model: 0 for a duplicate replica or a light model; else what swapping it
        back in later costs beyond its execution; plus a last-resort premium for the only
        copy of a model with requests waiting. Ties go to the least recently used; under
        plain LRU every model is free and only recency counts.
        """
        nbytes = state.info.nbytes if nbytes is None else nbytes  # or a split's share
        key = (d.index, nbytes)
        if key in self._victim_cache:
            return self._victim_cache[key]
        smart = self.policy.smart_eviction
        by_model, copies, reswap = self._by_model, self._copies, self._reswap_cache

        shed = self.admission.shed if self.admission is not None else frozenset()

        def price(r: Resident) -> tuple[float, float]:
            model = r.model_id
            owner = by_model.get(model)
            if owner is not None and owner.info.name in shed and not owner.queue:
                return (-1.0, r.last_used)  # its requests are refused: the first to go
            replicas = copies.get(model, 0)
            cheap = replicas > 1 or (owner is not None and not owner.info.heavy) or not smart
            p = 0.0 if cheap else reswap.get((model, d.index)) or self._reswap_ms(owner, d)
            if owner is not None and owner.queue and replicas <= 1:
                # Its waiting requests would be served here: evicted last, but evictable, or
                # under overload every resident model has requests waiting and nothing can move.
                p += WAITING_PRICE
            return (p, r.last_used)

        victims = self._victim_cache[key] = cheapest_window(d, nbytes, price, recency_of_all=not smart)
        return victims

    def _reswap_ms(self, owner: FunctionState | None, d: DeviceState) -> float:
        """What swapping a heavy sole copy back in later costs its requests beyond execution (ms)."""
        if owner is None:
            return 0.0
        exec_ms = owner.exec.at(1)
        key = (owner.info.nbytes, d.index)
        transfer = self._transfer_cache.get(key)
        if transfer is None:
            transfer = self._transfer_cache[key] = self.cost.transfer_ms(owner.info.nbytes, d.index, None, {})
        ms = self._reswap_cache[(owner.info.model_id, d.index)] = max(
            1e-3, self.cost.service_ms(transfer, exec_ms) - exec_ms
        )
        return ms

    def _commit(self, state: FunctionState, plan: Plan, batch: list[Waiting]) -> Run:
        d, info = plan.device, state.info
        now = self.clock()
        load = None
        if self.policy.static:
            if plan.cold:
                load = Load(d.resident[info.model_id].slice, fill=state.host_tier == "disk")
        elif plan.cold:
            for v in plan.victims:
                self._drop(d, v)
            s = d.layout.allocate(info.nbytes, self._large(d, info.nbytes))
            assert s is not None, "victims were chosen to make room"
            self._add(d, Resident(info.model_id, s, now, loading=True))
            load = Load(s, fill=plan.source is None and state.host_tier == "disk")
            if plan.shares:
                load = Load(s, share=(0, len(plan.shares) + 1))
            if plan.source is not None:
                src = self.devices[plan.source].resident[info.model_id]
                src.pins += 1
                self._pinned.add(d.index)
                load = Load(s, plan.source, src.slice.offset)
        if load is not None and load.fill:
            state.host_tier = "filling"
        shares = tuple(
            self._place_share(e, info, victims, stage, len(plan.shares) + 1)
            for stage, (e, victims) in enumerate(plan.shares, 1)
        )
        run = Run(
            d.index,
            info.name,
            info.model_id,
            tuple(w.rid for w in batch),
            tuple(plan.victims) if plan.cold and not self.policy.static else (),
            load,
            self._service_ms(state, plan, len(batch)),
            shares,
        )
        for e in [d, *(e for e, _ in plan.shares)]:
            e.running, e.started = run, now
        self._inflight[d.index] = batch
        self._victim_cache.clear()
        return run

    def _place_share(self, e: DeviceState, info: FunctionInfo, victims: list[str], stage: int, k: int) -> Share:
        for v in victims:
            self._drop(e, v)
        nbytes = paradegree.share_sizes(info.nbytes, k, info.cut(k))[stage]
        s = e.layout.allocate(nbytes, self._large(e, nbytes))
        assert s is not None, "victims were chosen to make room"
        e.share = s
        return Share(e.index, s, stage, tuple(victims))

    def _assign_home(self, state: FunctionState) -> None:
        """Native: reserve room on the online device with the most free memory, if any fits."""
        fits = [d for d in self.devices if d.online and d.layout.fits(state.info.nbytes)]
        if not fits:
            return
        d = max(fits, key=lambda d: (d.layout.largest_hole(), -d.index))
        s = d.layout.allocate(state.info.nbytes)
        assert s is not None
        self._add(d, Resident(state.info.model_id, s, self.clock(), loading=True))
        state.home = d.index

    def _reserved_only(self, d: DeviceState, model_id: str) -> bool:
        r = d.resident[model_id]
        return self.policy.static and r.loading and (d.running is None or d.running.model_id != model_id)

    def _unpin(self, run: Run) -> None:
        """Release the peer source of a copy, once: at swap_done or, failing that, at finish."""
        if run.device in self._pinned and run.load is not None and run.load.peer is not None:
            self._pinned.discard(run.device)
            src = self.devices[run.load.peer].resident.get(run.model_id)
            if src is not None:
                src.pins -= 1

    def _release_source(self, peer: int | None, model_id: str) -> None:
        if peer is not None:
            src = self.devices[peer].resident.get(model_id)
            if src is not None:
                src.pins -= 1

    def _add(self, d: DeviceState, r: Resident) -> None:
        d.resident[r.model_id] = r
        self._copies[r.model_id] = self._copies.get(r.model_id, 0) + 1
        owner = self._by_model.get(r.model_id)
        if owner is not None:
            self._unplaced.pop(owner.info.name, None)

    def _drop(self, d: DeviceState, model_id: str) -> None:
        r = d.resident.pop(model_id, None)
        if r is not None:
            d.layout.release(r.slice)
            left = self._copies[model_id] - 1
            if left:
                self._copies[model_id] = left
            else:
                del self._copies[model_id]
                owner = self._by_model.get(model_id)
                if owner is not None:
                    self._unplaced[owner.info.name] = None
