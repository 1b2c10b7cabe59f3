"""The full policy's rules, driven through the pure scheduler with a hand-set clock."""

from __future__ import annotations

from dataclasses import replace

import pytest

from gateway.costmodel import GB, CostModel, ExecProfile, Topology, pipelined
from gateway.scheduler import POLICIES, Evict, FunctionInfo, Policy, Reject, Run, Scheduler
from gateway.slo import PriorityTuner, SloWindow
from tests.unit.clock import Clock

MB = 1 << 20


def runs(decisions: list) -> list[Run]:
    return [d for d in decisions if isinstance(d, Run)]


def fn(name: str, mb: int = 100, **kw: object) -> FunctionInfo:
    return FunctionInfo(name, f"{name}@1", mb * MB, **kw)  # type: ignore[arg-type]


def node(capacity_mb: int = 1000, links: dict | None = None, policy: str = "torpor") -> tuple[Scheduler, Clock]:
    """Four devices, two per PCIe switch, like the paper's V100 node."""
    topo = Topology((capacity_mb * MB,) * 4, (0, 0, 1, 1), links=links or {}, interference=1.5)
    clock = Clock()
    return Scheduler(topo, clock, policy, preload=False), clock


def warm(s: Scheduler, name: str, device: int, rid: int) -> None:
    """Make `name` resident on `device` (and only there), leaving every device idle."""
    busy = [d for d in range(len(s.devices)) if d != device]
    blockers = [f"_block{d}" for d in busy]
    for b in blockers:
        if b not in s.functions:
            s.function_added(fn(b, 1))
    # Occupy the other devices so the cold start lands on `device`.
    for i, d in enumerate(busy):
        s.devices[d].running = Run(d, blockers[i], f"{blockers[i]}@1", ())
    (r,) = runs(s.arrived(rid, name))
    assert r.device == device
    s.swap_done(device)
    s.finished(device)
    for d in busy:
        s.devices[d].running = None


# -- placement ---------------------------------------------------------------------
def test_host_swap_avoids_a_device_whose_switch_neighbour_is_swapping() -> None:
    s, _ = node()
    for name in ("heavy", "new"):
        s.function_added(fn(name, 500))
    (r1,) = runs(s.arrived(1, "heavy"))
    assert r1.device == 0 and r1.load is not None  # swapping, not yet done
    (r2,) = runs(s.arrived(2, "new"))
    assert r2.device in (2, 3), "device 1 shares device 0's PCIe switch while it swaps"


def test_neighbour_swapping_a_light_model_is_preferred_to_one_swapping_a_heavy_one() -> None:
    s, _ = node()
    s.function_added(fn("light", 500, heavy=False))
    s.function_added(fn("heavy", 500, heavy=True))
    s.function_added(fn("new", 100))
    (r1,) = runs(s.arrived(1, "light"))  # device 0
    (r2,) = runs(s.arrived(2, "heavy"))  # device 2 (switch 1; device 1 is 0's neighbour)
    assert (r1.device, r2.device) == (0, 2)
    (r3,) = runs(s.arrived(3, "new"))
    assert r3.device == 1, "device 1's neighbour swaps a light model, device 3's a heavy one"


def test_peer_copy_from_a_busy_holder_over_the_fastest_link() -> None:
    s, _ = node(links={(0, 3): 25 * GB})
    s.function_added(fn("a", 200))
    warm(s, "a", 0, 1)
    (busy,) = runs(s.arrived(2, "a"))  # warm on device 0, which is now busy
    assert busy.device == 0 and busy.load is None
    (copy,) = runs(s.arrived(3, "a"))
    assert copy.device == 3 and copy.load is not None and copy.load.peer == 0, "NVLink 0-3 beats PCIe"
    assert s.devices[0].resident["a@1"].pins == 1
    s.swap_done(3)
    assert s.devices[0].resident["a@1"].pins == 0, "the source is released once the copy is done"


def test_host_swap_is_used_when_no_peer_link_beats_it() -> None:
    topo = Topology((1000 * MB,) * 2, (0, 1), host_bandwidth=12 * GB, pcie_peer_bandwidth=6 * GB)
    s = Scheduler(topo, Clock(), preload=False)
    s.function_added(fn("a", 200))
    (r1,) = runs(s.arrived(1, "a"))
    s.swap_done(r1.device)
    (r2,) = runs(s.arrived(2, "a"))
    assert r2.load is not None and r2.load.peer is None


def test_idle_device_holding_the_model_wins_over_any_copy() -> None:
    s, _ = node()
    s.function_added(fn("a"))
    warm(s, "a", 2, 1)
    (r,) = runs(s.arrived(2, "a"))
    assert r.device == 2 and r.load is None and r.evict == ()


# -- eviction ------------------------------------------------------------------------
def test_eviction_only_under_pressure_and_light_or_duplicate_first() -> None:
    topo = Topology((300 * MB,), (0,))
    s = Scheduler(topo, Clock(), preload=False)
    s.function_added(fn("heavy_old", 100, heavy=True))
    s.function_added(fn("light_new", 100, heavy=False))
    s.function_added(fn("c", 100))
    s.function_added(fn("d", 100))
    for rid, name in enumerate(["heavy_old", "light_new", "c"], 1):
        (r,) = runs(s.arrived(rid, name))
        assert r.evict == (), "room left: nothing is evicted"
        s.finished(0)
    (r,) = runs(s.arrived(9, "d"))
    assert r.evict == ("light_new@1",), "the light model goes before the least recently used heavy one"


def test_a_sole_copy_with_requests_waiting_is_evicted_last() -> None:
    topo = Topology((200 * MB,), (0,))
    clock = Clock()
    s = Scheduler(topo, clock, preload=False)
    for name in ("a", "e"):
        s.function_added(fn(name, 100))
    s.function_added(fn("b", 100, slo_ms=5000))
    for rid, name in enumerate(["b", "a"], 1):  # b is the least recently used
        (r,) = runs(s.arrived(rid, name))
        s.finished(0)
    runs(s.arrived(3, "a"))  # the device runs a
    s.arrived(4, "b")  # b waits, its model is here
    clock.t += 0.001
    s.arrived(5, "e")  # e goes first (earlier deadline); not prefetched: only b's model could make room
    assert s.devices[0].prefetch is None
    (r,) = runs(s.finished(0))
    assert r.function == "e" and r.evict == ("a@1",), "b is older but has a request waiting"
    s.swap_done(0)
    (r,) = runs(s.finished(0))
    assert r.function == "b" and r.load is None


def test_a_peer_source_is_not_evicted_while_copied_from() -> None:
    topo = Topology((100 * MB, 100 * MB), (0, 1))
    s = Scheduler(topo, Clock(), preload=False)
    s.function_added(fn("a", 100, exec_ms=1000))  # long runs: copying beats waiting
    s.function_added(fn("b", 100))
    warm(s, "a", 0, 1)
    runs(s.arrived(2, "a"))  # device 0 busy with a
    (copy,) = runs(s.arrived(3, "a"))  # a copied from device 0 onto device 1
    assert copy.load is not None and copy.load.peer == 0
    assert s.devices[0].resident["a@1"].pins == 1
    s.finished(0)  # device 0 idle again, but its a is still being read
    assert runs(s.arrived(4, "b")) == [], "b would have to evict the pinned a: it waits"
    (r,) = runs(s.swap_done(1) + s.finished(1))
    assert r.function == "b" and "a@1" in r.evict


def test_model_larger_than_any_device_is_never_placed() -> None:
    s, _ = node(capacity_mb=100)
    s.function_added(fn("big", 200))
    assert runs(s.arrived(1, "big")) == []
    assert s.queue_depth("big") == 1


# -- SLO-aware queueing ------------------------------------------------------------------
def test_rrc_formula_and_window() -> None:
    w = SloWindow(slo_ms=100, percentile=0.9, window_s=10)
    for i in range(8):
        w.record(float(i), 50)
    w.record(8.0, 500)
    w.record(9.0, None)
    # n = 10, m = 8: (0.9·10 − 8) / 0.1 = 10 on-time requests needed
    assert w.rrc(9.0) == pytest.approx(10)
    assert not w.meeting(9.0)
    assert w.rrc(100.0) == 0 and w.meeting(100.0), "outcomes leave the window"
    assert w.attainment == pytest.approx(0.8)


def test_budget_order_spares_the_function_that_can_afford_a_miss_and_serves_one_far_behind_last() -> None:
    topo = Topology((1000 * MB,), (0,))
    clock = Clock()
    # The order alone: admission would shed "lost" (behind its SLO, 5 s of device time a request).
    s = Scheduler(topo, clock, replace(POLICIES["torpor"], admit_utilization=None), preload=False)
    for name in ("spare", "tight", "lost", "blocker"):
        s.function_added(fn(name, 10, slo_ms=1000))
    rid = iter(range(100, 1000))

    def serve(name: str, late: bool) -> None:
        runs(s.arrived(next(rid), name))
        clock.t += 5 if late else 0.01
        s.finished(0)

    for _ in range(100):  # a hundred on time: two misses to spare at p98
        serve("spare", late=False)
    for _ in range(5):
        serve("lost", late=True)
    assert s.functions["spare"].slo.spare(clock.t) >= 1 > s.functions["tight"].slo.spare(clock.t)
    assert s.rrc("lost") > s.policy.give_up
    runs(s.arrived(1, "blocker"))
    runs(s.arrived(2, "lost"))  # the oldest request
    runs(s.arrived(3, "spare"))
    clock.t += 0.01  # tight's deadline is 10 ms later than spare's: within what spare yields
    runs(s.arrived(4, "tight"))
    order = [runs(s.finished(0))[0].function for _ in range(3)]
    assert order == ["tight", "spare", "lost"], "no misses to spare first, then by deadline, far behind last"


def test_rrc_order_serves_a_function_missing_its_slo_within_reach_first_and_one_far_behind_last() -> None:
    topo = Topology((1000 * MB,), (0,))
    clock = Clock()
    s = Scheduler(topo, clock, Policy("torpor-rrc", order="rrc", admit_utilization=None), window_s=60, preload=False)
    s.tuner = PriorityTuner(period_s=1e9)  # the threshold stays 0 here; its tuning is tested below
    for name in ("ok", "failing", "lost", "blocker"):
        s.function_added(fn(name, 10, slo_ms=1000))
    rid = iter(range(100, 1000))

    def serve(name: str, late: bool) -> None:
        runs(s.arrived(next(rid), name))
        clock.t += 5 if late else 0.01
        s.finished(0)

    serve("failing", late=True)  # one miss in 21: behind its SLO, but within reach
    for _ in range(20):
        serve("failing", late=False)
    for _ in range(5):  # five misses in five: too far behind to catch up soon
        serve("lost", late=True)
    assert 0 < s.rrc("failing") <= s.policy.give_up < s.rrc("lost") and s.rrc("ok") == 0
    runs(s.arrived(1, "blocker"))
    runs(s.arrived(2, "lost"))  # the oldest request
    runs(s.arrived(3, "ok"))
    clock.t += 0.01
    runs(s.arrived(4, "failing"))
    order = [runs(s.finished(0))[0].function for _ in range(3)]
    assert order == ["failing", "ok", "lost"], "within reach first, meeting it next, far behind last"


def test_fifo_order_for_simpleswap() -> None:
    topo = Topology((1000 * MB,), (0,))
    clock = Clock()
    s = Scheduler(topo, clock, "simpleswap", preload=False)
    for name in ("a", "b", "c"):
        s.function_added(fn(name, 10, slo_ms=10_000 if name == "a" else 10))
    runs(s.arrived(1, "c"))
    runs(s.arrived(2, "a"))  # long SLO, but first
    clock.t += 0.001
    runs(s.arrived(3, "b"))  # short SLO: deadline earlier than a's
    (r,) = runs(s.finished(0))
    assert r.function == "a"


def test_earliest_deadline_first_within_a_class() -> None:
    topo = Topology((1000 * MB,), (0,))
    clock = Clock()
    s = Scheduler(topo, clock, preload=False)
    for name in ("a", "b", "c"):
        s.function_added(fn(name, 10, slo_ms=10_000 if name == "a" else 100))
    runs(s.arrived(1, "c"))
    runs(s.arrived(2, "a"))
    clock.t += 0.001
    runs(s.arrived(3, "b"))
    (r,) = runs(s.finished(0))
    assert r.function == "b"


def test_late_requests_are_dropped_only_when_the_function_asks() -> None:
    topo = Topology((1000 * MB,), (0,))
    clock = Clock()
    s = Scheduler(topo, clock, preload=False)
    s.function_added(fn("blocker", 10))
    s.function_added(fn("strict", 10, slo_ms=50, exec_ms=20, drop_late=True))
    s.function_added(fn("lenient", 10, slo_ms=50, exec_ms=20))
    runs(s.arrived(1, "blocker"))
    s.arrived(2, "strict")
    clock.t += 0.001
    s.arrived(3, "lenient")
    clock.t += 0.040  # 40 ms gone: 20 ms of execution no longer fits a 50 ms SLO
    out = s.finished(0)
    assert Reject(2, "late") in out
    (r,) = runs(out)
    assert r.function == "lenient", "a function without drop_late still runs late"


def test_tuner_doubles_its_step_on_a_rise_and_halves_and_turns_on_a_fall() -> None:
    t = PriorityTuner(step=1.0, period_s=2)
    t.tune(0, 50)  # starts the clock
    t.tune(2, 50)  # no change in score: one step the same way
    assert (t.threshold, t.step) == (1, 1)
    t.tune(4, 52)  # +4%: the step doubles, same direction
    assert (t.threshold, t.step) == (3, 2)
    t.tune(6, 53)  # +2%: within the band, same step
    assert (t.threshold, t.step) == (5, 2)
    t.tune(8, 50)  # -5.7%: halve and turn around
    assert (t.threshold, t.step) == (4, 1)
    t.tune(9, 0)  # within the period: nothing changes
    assert t.threshold == 4


# -- batching ----------------------------------------------------------------------------
def test_batches_up_to_max_batch_size() -> None:
    topo = Topology((1000 * MB,), (0,))
    s = Scheduler(topo, Clock(), preload=False)
    s.function_added(fn("blocker", 10))
    s.function_added(fn("b", 10, exec_ms=10, batch_exec_ms=16, max_batch_size=4, slo_ms=1000))
    runs(s.arrived(1, "blocker"))
    for rid in range(10, 16):
        s.arrived(rid, "b")
    (r,) = runs(s.finished(0))
    assert r.rids == (10, 11, 12, 13)
    (r2,) = runs(s.finished(0))
    assert r2.rids == (14, 15) and r2.load is None


def test_batch_stops_where_the_slo_would_be_missed() -> None:
    topo = Topology((1000 * MB,), (0,))
    clock = Clock()
    s = Scheduler(topo, clock, preload=False)
    s.function_added(fn("blocker", 10))
    # batch 1: 10 ms, batch 8: 80 ms (10 ms a request); SLO 40 ms
    s.function_added(fn("b", 1, exec_ms=10, batch_exec_ms=80, max_batch_size=8, slo_ms=40))
    runs(s.arrived(1, "blocker"))
    for rid in range(10, 16):
        s.arrived(rid, "b")
    clock.t += 0.005
    (r,) = runs(s.finished(0))
    # 5 ms waited; the model is 1 MiB (~0.1 ms to copy); 3 requests: 30 ms -> done at 35 ms; 4: 45 ms
    assert r.rids == (10, 11, 12)


def test_no_batching_in_simpleswap() -> None:
    topo = Topology((1000 * MB,), (0,))
    s = Scheduler(topo, Clock(), "simpleswap", preload=False)
    s.function_added(fn("blocker", 10))
    s.function_added(fn("b", 10, max_batch_size=8))
    runs(s.arrived(1, "blocker"))
    for rid in range(10, 13):
        s.arrived(rid, "b")
    (r,) = runs(s.finished(0))
    assert r.rids == (10,)


# -- baselines ------------------------------------------------------------------------------
def test_native_gives_each_function_a_device_while_memory_lasts() -> None:
    topo = Topology((250 * MB, 250 * MB), (0, 1))
    s = Scheduler(topo, Clock(), "native", preload=False)
    for name in "abcde":
        s.function_added(fn(name, 100))
    homes = {n: s.functions[n].home for n in "abcde"}
    assert sorted(h for h in homes.values() if h is not None) == [0, 0, 1, 1]
    unserved = next(n for n, h in homes.items() if h is None)
    assert s.arrived(1, unserved) == [Reject(1, "no device")]
    served = next(n for n, h in homes.items() if h is not None)
    (r,) = runs(s.arrived(2, served))
    assert r.load is not None and r.evict == ()  # loaded once, then it stays
    s.finished(r.device)
    (r2,) = runs(s.arrived(3, served))
    assert r2.load is None


def test_native_never_evicts_and_queues_on_the_home_device() -> None:
    topo = Topology((250 * MB, 250 * MB), (0, 1))
    s = Scheduler(topo, Clock(), "native", preload=False)
    s.function_added(fn("a", 100))
    s.function_added(fn("b", 100))
    home = s.functions["a"].home
    (r,) = runs(s.arrived(1, "a"))
    assert r.device == home
    assert runs(s.arrived(2, "a")) == [], "native never runs a function elsewhere"
    out = s.finished(home)
    assert not any(isinstance(d, Evict) for d in out)


# -- cost model ----------------------------------------------------------------------------
def test_transfers_through_one_switch_share_it_and_nvlink_does_not() -> None:
    topo = Topology((1,) * 4, (0, 0, 1, 1), host_bandwidth=10 * GB, links={(0, 1): 50 * GB})
    cost = CostModel(topo)
    alone = cost.transfer_ms(1_000_000_000, 1, None, {})
    assert alone == pytest.approx(100)
    assert cost.transfer_ms(1_000_000_000, 1, None, {0: 1}) == pytest.approx(200)
    assert cost.transfer_ms(1_000_000_000, 2, None, {0: 1}) == pytest.approx(100)
    assert cost.transfer_ms(1_000_000_000, 1, 0, {0: 3}) == pytest.approx(20)


def test_pipelined_service_and_exec_profile() -> None:
    assert pipelined(10, 30, overlap=1) == 30
    assert pipelined(10, 30, overlap=0) == 40
    p = ExecProfile(10, 40, max_batch=4)
    assert [p.at(b) for b in (1, 2, 4)] == [10, 20, 40]
    p.observe(1, 20, weight=0.5)
    assert p.at(1) == pytest.approx(15)


def test_predict_reports_the_parts() -> None:
    topo = Topology((1000 * MB,), (0,), host_bandwidth=1 * GB, pipeline_overlap=0)
    s = Scheduler(topo, Clock(), preload=False)
    s.function_added(fn("a", 100, exec_ms=20))
    p = s.predict("a")
    assert p["wait_ms"] == 0 and p["transfer_ms"] == pytest.approx(100 * MB / 1e6)
    assert p["completion_ms"] == pytest.approx(p["transfer_ms"] + 20)
