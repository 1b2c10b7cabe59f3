"""Copies that do not wait for a request's device: preload into free memory, prefetch onto busy
devices; and the placement rules that keep large models from churning (segregated arena, warm first)."""

from __future__ import annotations

from dataclasses import replace

from gateway.costmodel import Topology
from gateway.scheduler import POLICIES, FunctionInfo, Prefetch, Reject, Run, Scheduler
from shared.arena import ArenaLayout
from tests.unit.clock import Clock

MB = 1 << 20


def fn(name: str, mb: int = 100, **kw: object) -> FunctionInfo:
    return FunctionInfo(name, f"{name}@1", mb * MB, **kw)  # type: ignore[arg-type]


def of(decisions: list, kind: type) -> list:
    return [d for d in decisions if isinstance(d, kind)]


def warm_alone(s: Scheduler, name: str) -> int:
    """Serve one request of `name` (rid 1) cold and let it finish: the device now holding it, idle."""
    (run,) = of(s.arrived(1, name), Run)
    s.swap_done(run.device)
    s.finished(run.device)
    return run.device


def test_free_device_memory_takes_deployed_models_before_their_first_request() -> None:
    s = Scheduler(Topology.flat([250 * MB, 250 * MB]), Clock())
    for name in ("a", "b", "c", "d", "e"):
        s.function_added(fn(name))
    pre = of(s.settle(), Prefetch)
    assert [(p.function, p.device, p.evict) for p in pre] == [("a", 0, ()), ("b", 1, ())], "one per copy engine"
    more = of(s.prefetched(0) + s.prefetched(1), Prefetch)
    assert sorted(p.function for p in more) == ["c", "d"]
    for p in more:
        s.prefetched(p.device)
    assert s.settle() == [], "e fits nowhere: nothing is evicted for a model nobody asked for"
    (r,) = of(s.arrived(1, "a"), Run)
    assert r.load is None and r.device == 0, "warm from its first request"


def test_a_busy_device_copies_the_next_model_in_while_it_runs() -> None:
    clock = Clock()
    s = Scheduler(Topology.flat([250 * MB]), clock, preload=False)
    for name in ("a", "b"):
        s.function_added(fn(name, exec_ms=50))
    (first,) = of(s.arrived(1, "a"), Run)
    s.swap_done(0)
    assert s.devices[0].swapping is False
    out = s.arrived(2, "b")  # the device runs a; its copy engine is idle
    (p,) = of(out, Prefetch)
    assert of(out, Run) == [] and p.device == 0 and p.function == "b" and p.load.peer is None
    assert s.residency("b@1") == [0]
    clock.t += 0.01
    s.prefetched(0)
    (r,) = of(s.finished(0), Run)
    assert r.function == "b" and r.load is None, "b runs warm: its copy was made while a ran"


def test_a_run_starts_on_a_model_still_being_prefetched() -> None:
    clock = Clock()
    s = Scheduler(Topology.flat([250 * MB]), clock, preload=False)
    for name in ("a", "b"):
        s.function_added(fn(name, exec_ms=5))
    of(s.arrived(1, "a"), Run)
    s.swap_done(0)
    of(s.arrived(2, "b"), Prefetch)
    (r,) = of(s.finished(0), Run)  # a done before b's copy: b runs as its groups land
    assert r.function == "b" and r.load is None
    assert s.devices[0].swapping, "the copy engine is still bringing b in"
    s.prefetched(0)
    assert not s.devices[0].resident["b@1"].loading


def test_a_failed_prefetch_leaves_nothing_resident() -> None:
    s = Scheduler(Topology.flat([250 * MB]), Clock(), preload=False)
    for name in ("a", "b"):
        s.function_added(fn(name))
    of(s.arrived(1, "a"), Run)
    s.swap_done(0)
    of(s.arrived(2, "b"), Prefetch)
    s.prefetched(0, ok=False)
    assert s.residency("b@1") == []
    (r,) = of(s.finished(0), Run)
    assert r.function == "b" and r.load is not None, "swapped in again with its request"


def test_large_models_fill_the_arena_from_the_top_and_small_ones_from_the_bottom() -> None:
    layout = ArenaLayout(1000 * MB)
    big = layout.allocate(300 * MB, high=True)
    small = layout.allocate(10 * MB)
    assert big is not None and small is not None
    assert big.end == 1000 * MB and small.offset == 0
    s = Scheduler(Topology.flat([1000 * MB]), Clock(), preload=False)
    s.function_added(fn("big", 300))
    s.function_added(fn("small", 10))
    (r,) = of(s.arrived(1, "big"), Run)
    assert r.load is not None and r.load.slice.end == 1000 * MB


def test_a_freeing_device_serves_what_only_it_holds_when_the_head_can_wait() -> None:
    clock = Clock()
    policy = replace(POLICIES["torpor"], prefetch=False)  # the rule alone, no copy ahead
    s = Scheduler(Topology.flat([300 * MB, 300 * MB]), clock, policy, preload=False)
    s.function_added(fn("pinned", 250, exec_ms=40, slo_ms=200))
    s.function_added(fn("flexible", 60, exec_ms=10, slo_ms=80))
    s.function_added(fn("filler", 40, exec_ms=10, slo_ms=10_000))
    holder = warm_alone(s, "pinned")  # pinned's model is on one device only, now idle
    other = 1 - holder
    s.devices[holder].running = Run(holder, "filler", "filler@1", (), predicted_ms=10)
    s.devices[other].running = Run(other, "filler", "filler@1", (), predicted_ms=20)
    s.devices[holder].started = s.devices[other].started = clock.t
    s.arrived(2, "pinned")
    clock.t += 0.001
    s.arrived(3, "flexible")  # earlier deadline, but any device can take it
    clock.t += 0.01
    s.devices[holder].running = None
    (r,) = of(s.finished(holder), Run)
    assert r.function == "pinned" and r.load is None, "flexible can still make it on the other device"
    s.devices[other].running = None
    (r,) = of(s.finished(other), Run)
    assert r.function == "flexible"


def test_without_the_rule_the_head_of_the_order_takes_the_device() -> None:
    clock = Clock()
    policy = replace(POLICIES["torpor"], prefetch=False, warm_first=False)
    s = Scheduler(Topology.flat([300 * MB, 300 * MB]), clock, policy, preload=False)
    s.function_added(fn("pinned", 250, exec_ms=40, slo_ms=200))
    s.function_added(fn("flexible", 60, exec_ms=10, slo_ms=80))
    s.function_added(fn("filler", 40, exec_ms=10, slo_ms=10_000))
    holder = warm_alone(s, "pinned")
    other = 1 - holder
    s.devices[holder].running = Run(holder, "filler", "filler@1", (), predicted_ms=10)
    s.devices[other].running = Run(other, "filler", "filler@1", (), predicted_ms=20)
    s.devices[holder].started = s.devices[other].started = clock.t
    s.arrived(2, "pinned")
    clock.t += 0.001
    s.arrived(3, "flexible")
    clock.t += 0.01
    s.devices[holder].running = None
    (r,) = of(s.finished(holder), Run)
    assert r.function == "flexible" and r.evict == ("pinned@1",), "the earliest deadline evicts the pinned model"


def test_a_function_whose_requests_were_dropped_in_a_pass_is_not_considered_again_in_it() -> None:
    # Warm first picks "pinned" for the freeing device (its model is there alone), but with a
    # neighbour swapping, its heavy run would take 3x as long: its drop_late request is
    # rejected instead. "pinned" then has no request left, yet it is still in the pass's
    # order behind "middle": the pass must go on with "middle", not look at pinned's queue.
    clock = Clock()
    policy = replace(POLICIES["torpor"], prefetch=False)
    s = Scheduler(Topology((300 * MB,) * 3, (0, 0, 0), interference=3.0), clock, policy, preload=False)
    s.function_added(fn("pinned", 250, exec_ms=40, slo_ms=100, drop_late=True))
    s.function_added(fn("flexible", 60, exec_ms=10, slo_ms=80))
    s.function_added(fn("middle", 60, exec_ms=10, slo_ms=90))
    s.function_added(fn("mover", 100, exec_ms=10, slo_ms=10_000))
    s.function_added(fn("filler", 40, exec_ms=10, slo_ms=10_000))
    holder = warm_alone(s, "pinned")
    (moving,) = of(s.arrived(2, "mover"), Run)  # its swap stays in flight: the holder's neighbour swaps
    assert moving.device != holder and moving.load is not None
    (third,) = {0, 1, 2} - {holder, moving.device}
    s.devices[holder].running = Run(holder, "filler", "filler@1", (), predicted_ms=10)
    s.devices[third].running = Run(third, "filler", "filler@1", (), predicted_ms=20)
    s.devices[holder].started = s.devices[third].started = clock.t
    s.arrived(3, "pinned")
    clock.t += 0.001
    s.arrived(4, "flexible")  # the earliest deadline
    s.arrived(5, "middle")
    clock.t += 0.01
    s.devices[holder].running = None
    out = s.finished(holder)
    assert Reject(3, "late") in out
    (r,) = of(out, Run)
    assert (r.function, r.device) == ("middle", holder)
