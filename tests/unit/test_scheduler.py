from __future__ import annotations

from gateway.scheduler import Evict, FunctionInfo, Load, Reject, Run, Scheduler
from shared.arena import ALIGN

MB = 256 * ALIGN  # 1 MiB


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        self.t += 0.001  # every event a millisecond later: well within the default SLO
        return self.t


def make(devices: int = 2, capacity: int = 10 * MB) -> Scheduler:
    return Scheduler([capacity] * devices, Clock(), preload=False)


def runs(decisions: list) -> list[Run]:
    return [d for d in decisions if isinstance(d, Run)]


def test_cold_then_warm_on_the_same_device() -> None:
    s = make()
    s.function_added(FunctionInfo("a", "a@1", 4 * MB))
    (r1,) = runs(s.arrived(1, "a"))
    assert r1.load == Load(r1.load.slice) and r1.rids == (1,) and r1.evict == ()
    s.finished(r1.device)
    (r2,) = runs(s.arrived(2, "a"))
    assert r2.device == r1.device and r2.load is None
    assert s.residency("a@1") == [r1.device]


def test_one_request_at_a_time_per_device_and_fifo_queue() -> None:
    s = make(devices=1)
    s.function_added(FunctionInfo("a", "a@1", MB))
    s.function_added(FunctionInfo("b", "b@1", MB))
    (r1,) = runs(s.arrived(1, "a"))
    assert runs(s.arrived(2, "b")) == []
    assert runs(s.arrived(3, "a")) == []
    assert s.queue_depth("a") == 1 and s.queue_depth("b") == 1
    (r2,) = runs(s.finished(0))
    assert r2.rids == (2,)  # b's request arrived before a's second
    (r3,) = runs(s.finished(0))
    assert r3.rids == (3,) and r3.load is None  # a is still resident


def test_lru_eviction_when_the_model_does_not_fit() -> None:
    s = make(devices=1, capacity=10 * MB)
    for name in "abc":
        s.function_added(FunctionInfo(name, f"{name}@1", 4 * MB))
    for rid, name in enumerate("ab", 1):
        runs(s.arrived(rid, name))
        s.finished(0)
    (r,) = runs(s.arrived(3, "c"))
    assert r.evict == ("a@1",)  # a was used least recently
    assert s.residency("b@1") == [0] and s.residency("a@1") == []


def test_prefers_idle_device_holding_the_model_then_the_one_needing_least_eviction() -> None:
    s = make(devices=2, capacity=8 * MB)
    s.function_added(FunctionInfo("a", "a@1", 6 * MB))
    s.function_added(FunctionInfo("b", "b@1", 6 * MB))
    (ra,) = runs(s.arrived(1, "a"))
    assert ra.device == 0
    s.finished(0)
    (rb,) = runs(s.arrived(2, "b"))
    assert rb.device == 1 and rb.evict == ()  # device 1 is empty: no eviction needed
    s.finished(1)
    (ra2,) = runs(s.arrived(3, "a"))
    assert ra2.device == 0 and ra2.load is None


def test_model_in_use_is_never_evicted() -> None:
    s = make(devices=1, capacity=8 * MB)
    s.function_added(FunctionInfo("a", "a@1", 6 * MB))
    s.function_added(FunctionInfo("b", "b@1", 6 * MB))
    runs(s.arrived(1, "a"))
    assert runs(s.arrived(2, "b")) == []  # device busy with a
    assert s.residency("a@1") == [0]
    (rb,) = runs(s.finished(0))
    assert rb.evict == ("a@1",)


def test_model_larger_than_device_waits_forever_not_placed() -> None:
    s = make(devices=1, capacity=4 * MB)
    s.function_added(FunctionInfo("big", "big@1", 5 * MB))
    assert runs(s.arrived(1, "big")) == []


def test_removed_function_rejects_queued_and_evicts_idle_copies() -> None:
    s = make(devices=1)
    s.function_added(FunctionInfo("a", "a@1", MB))
    s.function_added(FunctionInfo("b", "b@1", MB))
    runs(s.arrived(1, "a"))
    s.arrived(2, "b")
    decisions = s.function_removed("b")
    assert Reject(2, "removed") in decisions
    # a is running; removing it defers eviction until it finishes
    assert s.function_removed("a") == []
    assert Evict(0, "a@1") in s.finished(0)
    assert s.arrived(3, "a") == [Reject(3, "removed")]


def test_failed_load_forgets_residency_and_lost_device_is_skipped() -> None:
    s = make(devices=2)
    s.function_added(FunctionInfo("a", "a@1", MB))
    (r,) = runs(s.arrived(1, "a"))
    s.finished(r.device, loaded_ok=False)
    assert s.residency("a@1") == []
    s.device_lost(0)
    (r2,) = runs(s.arrived(2, "a"))
    assert r2.device == 1
    assert "busy=1 offline=1" in repr(s)


def test_busy_device_holding_the_model_serves_it_as_a_peer_and_is_pinned() -> None:
    s = make(devices=2, capacity=8 * MB)
    s.function_added(FunctionInfo("a", "a@1", 6 * MB))
    s.function_added(FunctionInfo("b", "b@1", 6 * MB))
    (r1,) = runs(s.arrived(1, "a"))
    s.finished(r1.device)
    (r2,) = runs(s.arrived(2, "a"))  # device 0 now busy with a, warm
    (r3,) = runs(s.arrived(3, "a"))  # device 1 idle: copy a from busy device 0
    assert r3.device == 1 and r3.load is not None
    held = s.devices[0].resident["a@1"].slice.offset  # a large model: at the top of the arena
    assert r3.load.peer == 0 and r3.load.peer_offset == held and r3.load.source == "peer:0"
    s.finished(r2.device)  # device 0 idle again, but a is pinned while device 1 copies it
    assert runs(s.arrived(4, "b")) == []  # b could only go where a must be evicted
    assert s.residency("a@1") == [0, 1]
    (r4,) = runs(s.finished(1))  # the copy is done: a is no longer pinned anywhere
    assert s.devices[0].resident.get("a@1") is None or s.devices[0].resident["a@1"].pins == 0
    assert r4.rids == (4,) and r4.evict == ("a@1",)


def test_model_still_loading_is_not_a_peer_source() -> None:
    s = make(devices=2)
    s.function_added(FunctionInfo("a", "a@1", MB))
    (r1,) = runs(s.arrived(1, "a"))  # loading on device 0
    (r2,) = runs(s.arrived(2, "a"))
    assert r2.device == 1 and r2.load is not None and r2.load.peer is None
