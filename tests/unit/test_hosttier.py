"""The disk tier: the scheduler fills an image from disk once, other devices wait or copy from a peer;
host memory accounting pushes the least recently used images back to disk."""

from __future__ import annotations

from gateway.hosttier import HostTier, Tier
from gateway.scheduler import FunctionInfo, Run, Scheduler
from tests.unit.test_scheduler import MB, Clock


def runs(decisions: list) -> list[Run]:
    return [d for d in decisions if isinstance(d, Run)]


def _scheduler(exec_ms: float = 5.0) -> Scheduler:
    s = Scheduler([10 * MB] * 2, Clock(), preload=False)
    s.function_added(FunctionInfo("a", "a@1", 4 * MB, exec_ms=exec_ms))
    s.host_tier("a", Tier.DISK)
    return s


def test_the_first_request_fills_from_disk_and_the_image_is_in_host_memory_after() -> None:
    s = _scheduler()
    (r,) = runs(s.arrived(1, "a"))
    assert r.load is not None and r.load.fill and r.load.source == "disk"
    assert s.host_tiers() == {"a": Tier.FILLING} and s.host_pinned() == {"a"}
    s.swap_done(r.device)
    assert s.host_tiers() == {"a": Tier.HOST}
    s.finished(r.device)
    # Evicted from the device later, the next swap comes from host memory, not disk.
    s.devices[r.device].resident.clear()
    s.devices[r.device].layout.release(s.devices[r.device].layout._taken[0])
    (again,) = runs(s.arrived(2, "a"))
    assert again.load is not None and not again.load.fill and again.load.source == "host"


def test_while_one_device_fills_another_does_not_read_the_half_filled_image() -> None:
    s = _scheduler(exec_ms=500.0)  # long runs: a second copy beats waiting for the first device
    (first,) = runs(s.arrived(1, "a"))
    # A second request: the other device is idle, but the host image is still arriving.
    assert runs(s.arrived(2, "a")) == []
    # Landed: the waiting request is placed at once, from host memory or the filled device.
    (second,) = runs(s.swap_done(first.device))
    assert second.rids == (2,) and second.device != first.device
    assert second.load is not None and not second.load.fill


def test_a_failed_fill_leaves_the_image_on_disk_to_be_read_again() -> None:
    s = _scheduler()
    (r,) = runs(s.arrived(1, "a"))
    s.swap_done(r.device, ok=False)
    s.finished(r.device, loaded_ok=False, failed=True)
    assert s.host_tiers() == {"a": Tier.DISK}
    (again,) = runs(s.arrived(2, "a"))
    assert again.load is not None and again.load.fill


def test_a_device_lost_mid_fill_leaves_the_image_on_disk() -> None:
    s = _scheduler()
    (r,) = runs(s.arrived(1, "a"))
    s.device_lost(r.device)
    assert s.host_tiers() == {"a": Tier.DISK}


def test_a_disk_swap_is_predicted_at_the_pace_of_the_slower_of_disk_and_link() -> None:
    s = _scheduler()
    s.cost.disk_bandwidth = 0.5e9
    disk = s.predict("a")
    s.host_tier("a", Tier.HOST)
    host = s.predict("a")
    assert disk["transfer_ms"] > host["transfer_ms"]


def test_least_recently_used_images_go_to_disk_but_never_pinned_ones() -> None:
    tier = HostTier(budget=10 * MB)
    tiers = {"a": Tier.HOST, "b": Tier.HOST, "c": Tier.HOST, "d": Tier.DISK}
    for t, name in enumerate("abcd"):
        tier.add(name, 3 * MB, now=float(t))
    assert tier.used(tiers) == 9 * MB
    tier.touch("a", now=10.0)  # a is now the most recent
    assert tier.victims(3 * MB, tiers, keep="d", pinned=set()) == ["b"]
    assert tier.victims(3 * MB, tiers, keep="d", pinned={"b"}) == ["c"]
    assert tier.victims(6 * MB, tiers, keep="d", pinned=set()) == ["b", "c"]  # 5 MiB over: two go
    assert tier.victims(9 * MB, tiers, keep="d", pinned=set()) == ["b", "c", "a"]
    assert tier.victims(9 * MB, tiers, keep="d", pinned={"a", "b"}) is None
    assert HostTier(budget=None).victims(100 * MB, tiers, keep="d", pinned=set()) == []
