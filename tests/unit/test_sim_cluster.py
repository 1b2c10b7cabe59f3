"""The simulated cluster: the live cluster policy on the virtual clock, node loss, forwarding."""

from __future__ import annotations

import pytest

from gateway.sim.cluster import ClusterKnobs, ClusterSimulation
from gateway.sim.engine import SimFunction
from gateway.sim.profile import parse
from gateway.sim.summary import summarize
from tests.unit.test_sim import PROFILE, poisson


def functions(n: int) -> list[SimFunction]:
    profile = parse(PROFILE)
    return [SimFunction(f"f{i}", profile.models["small"], 200.0) for i in range(n)]


def test_requests_enter_any_node_and_go_where_the_function_is() -> None:
    fns = functions(6)
    sim = ClusterSimulation(parse(PROFILE), "torpor", fns, 3, 0, ClusterKnobs(hop_ms=2.0))
    s = summarize(sim.run(poisson([2.0] * 6, 30.0)).merged())
    # Two thirds of requests enter a node that does not hold their function.
    assert 0.5 < sim.forwards / s["requests"] < 0.8
    assert s["dropped"] == 0 and s["functions_meeting_slo"] == 6
    # A forward's hop is in the latency: no request is faster than hop + exec for the forwarded ones.
    assert s["latency_ms"]["p50"] >= 5.0


def test_a_lost_nodes_functions_are_rehomed_after_the_ttl() -> None:
    fns = functions(6)
    knobs = ClusterKnobs(kill_node=0, kill_at=10.0, ttl_s=3.0)
    sim = ClusterSimulation(parse(PROFILE), "torpor", fns, 3, 0, knobs)
    lost = [name for name, holds in sim.holders.items() if "n0" in holds]
    assert len(lost) == 2
    sim.run(poisson([5.0] * 6, 40.0))
    assert sim.claims >= 2 and sim.unrouted  # its functions had nowhere to go for a while...
    for name in lost:  # ...then each has a live holder again
        assert sim.holders[name] and "n0" not in sim.holders[name], sim.holders[name]
    merged = sim.merged()
    served_late = [t for t in merged.tallies if t.latencies_ms]
    assert len(served_late) == 6  # every function served after all


def test_bad_cluster_knobs_are_one_line_errors() -> None:
    with pytest.raises(ValueError, match="--kill-node"):
        ClusterSimulation(parse(PROFILE), "torpor", functions(2), 2, 0, ClusterKnobs(kill_node=2))
