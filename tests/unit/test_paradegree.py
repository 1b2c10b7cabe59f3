"""Choosing the parallel degree of a cold start from the SLO and the cost model (pure)."""

from __future__ import annotations

import pytest

from gateway.costmodel import GB, CostModel, Topology
from gateway.decisions import Stages
from gateway.paradegree import choose, equal_cuts, predicted_ms, rest_bytes, share_sizes

MIB = 1 << 20


def _gpus() -> CostModel:
    # Four GPUs, two per PCIe switch, 12 GB/s per switch uplink (the v100x4 profile's shape).
    return CostModel(Topology((16 << 30,) * 4, (0, 0, 1, 1), host_bandwidth=12 * GB, pipeline_overlap=0.8))


def test_a_transfer_dominated_cold_start_is_split_over_devices_on_different_switches() -> None:
    cost = _gpus()
    # 6 GiB of weights (~540 ms to copy), 40 ms of execution, an SLO of 400 ms.
    d = choose(cost, 6 << 30, 40.0, idle=[0, 1, 2, 3], slo_ms=400, cuts=equal_cuts(6 << 30))
    assert d.k == 2 and {cost.topology.switches[x] for x in d.devices} == {0, 1}, d
    assert d.predicted_ms <= 400 < d.one_device_ms
    # Two more stages behind the same two switches would share their uplinks: no faster.
    cuts = equal_cuts(6 << 30)
    assert predicted_ms(cost, 6 << 30, 40.0, [0, 1, 2, 3], cuts=cuts) >= predicted_ms(cost, 6 << 30, 40.0, [0, 2]) - 1.0
    assert repr(d).startswith("<Degree k=2 on [0, 2]")


def test_the_smallest_degree_that_meets_the_slo_wins() -> None:
    cost = _gpus()
    # bert-base on a V100: ~36 ms to copy, 42 ms to run; one device meets a 200 ms SLO.
    assert choose(cost, 418 * MIB, 42.0, idle=[0, 1, 2, 3], slo_ms=200, cuts=equal_cuts(418 * MIB)).k == 1
    # An SLO no split meets: the fastest, if worth the devices (here 2 stages on 2 switches).
    d = choose(cost, 6 << 30, 40.0, idle=[0, 1, 2, 3], slo_ms=50, cuts=equal_cuts(6 << 30))
    assert d.k == 2 and d.predicted_ms < d.one_device_ms


def test_cpu_devices_share_their_cores_so_a_split_buys_nothing() -> None:
    # CPU devices copy with the same cores and memory bus: one "switch" for all of them.
    cpu = CostModel(Topology((1 << 30,) * 2, (0, 0), host_bandwidth=6 * GB, pipeline_overlap=0.8))
    d = choose(cpu, 418 * MIB, 188.0, idle=[0, 1], slo_ms=190, cuts=equal_cuts(418 * MIB))
    assert d.k == 1 and d.devices == (0,)


def test_only_idle_devices_are_used_and_one_is_needed() -> None:
    cost = _gpus()
    assert choose(cost, 6 << 30, 40.0, idle=[3], slo_ms=100).devices == (3,)
    with pytest.raises(ValueError, match="idle device"):
        choose(cost, 6 << 30, 40.0, idle=[], slo_ms=100)


def test_a_models_own_cuts_size_its_shares_and_only_a_cut_k_is_chosen() -> None:
    cost = _gpus()
    n = 6 << 30
    even = equal_cuts(n)
    assert [c.k for c in even] == [2, 3, 4] and share_sizes(n, 2, even[0]) == [n // 2, n // 2]
    # Cut at a swap-group boundary: the second stage holds 70% of the bytes and sets the pace.
    uneven = Stages((0, 3, 10), (int(n * 0.3), n - int(n * 0.3)))
    assert share_sizes(n, 2, uneven) == [int(n * 0.3), n - int(n * 0.3)]
    assert rest_bytes(n, 2, uneven) == n - int(n * 0.3)
    assert predicted_ms(cost, n, 40.0, [0, 2], cuts=(uneven,)) > predicted_ms(cost, n, 40.0, [0, 2], cuts=even) + 50
    # No cut known (a model of one swap group): never split.
    assert choose(cost, n, 40.0, idle=[0, 1, 2, 3], slo_ms=400).k == 1
    # Only a 3-stage cut: 3 stages or none.
    three = (even[1],)
    assert choose(cost, n, 40.0, idle=[0, 1, 2, 3], slo_ms=400, cuts=three).k == 3
