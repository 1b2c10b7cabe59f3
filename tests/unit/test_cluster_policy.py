"""The cluster's routing and placement rules, driven with a fake clock (no Redis, no processes)."""

from __future__ import annotations

from gateway.cluster.policy import Claim, ClusterPolicy, Forward, Knobs, Local, NoHolder, Release
from gateway.cluster.records import FunctionDef, Hold, HoldState, NodeRecord, NodeState
from tests.unit.clock import Clock

MB = 1 << 20


def fn(name: str = "f", slo_ms: float = 100.0, nbytes: int = 10 * MB) -> FunctionDef:
    return FunctionDef(name, 1, {"model": {"zoo": "mlp", "seed": 0}, "slo_ms": slo_ms}, [], [], nbytes)


def rec(name: str, ts: float, **kw: object) -> NodeRecord:
    return NodeRecord(name=name, url=f"http://{name}", ts=ts, **kw)  # type: ignore[arg-type]


def held(*nodes: str) -> dict[str, Hold]:
    return {n: Hold(HoldState.HOST, i + 1) for i, n in enumerate(nodes)}


def cluster(me: str = "a", nodes: tuple[str, ...] = ("a", "b", "c"), **knobs: float) -> tuple[ClusterPolicy, Clock]:
    clock = Clock()
    p = ClusterPolicy(me, clock, Knobs(**knobs))  # type: ignore[arg-type]
    for n in nodes:
        p.node_seen(rec(n, 1.0))
    return p, clock


def test_runs_here_when_held_and_the_slo_holds() -> None:
    p, _ = cluster()
    p.function_defined(fn(), held("a", "b"))
    assert p.route("f", here_ms=5.0) == Local(5.0)


def test_forwards_to_the_holder_with_the_best_predicted_completion() -> None:
    p, _ = cluster()
    p.node_seen(rec("b", 2.0, queued=8, exec_ms={"f": 10.0}))
    p.node_seen(rec("c", 2.0, queued=1, exec_ms={"f": 10.0}, resident=("f",)))
    p.function_defined(fn(), held("b", "c"))
    route = p.route("f", here_ms=None)
    assert isinstance(route, Forward) and route.node == "c" and route.url == "http://c"
    # hop 1 ms + one queued request of 10 ms + its own 10 ms, resident: no swap-in
    assert route.predicted_ms == 21.0


def test_forwards_when_here_misses_the_slo_and_a_holder_is_faster() -> None:
    p, _ = cluster()
    p.node_seen(rec("b", 2.0, exec_ms={"f": 10.0}, resident=("f",)))
    p.function_defined(fn(slo_ms=50), held("a", "b"))
    assert isinstance(p.route("f", here_ms=80.0), Forward)
    # Slower elsewhere than here: stay, even past the SLO.
    p.node_seen(rec("b", 3.0, queued=20, exec_ms={"f": 10.0}))
    assert p.route("f", here_ms=80.0) == Local(80.0)


def test_a_forwarded_request_is_never_forwarded_again() -> None:
    p, _ = cluster()
    p.function_defined(fn(), held("b"))
    assert isinstance(p.route("f", here_ms=None, forwarded=True), NoHolder)
    p.function_defined(fn(), held("a", "b"))
    assert p.route("f", here_ms=500.0, forwarded=True) == Local(500.0)


def test_forwards_spread_before_the_next_heartbeat() -> None:
    p, _ = cluster()
    p.node_seen(rec("b", 2.0, exec_ms={"f": 10.0}))
    p.node_seen(rec("c", 2.0, exec_ms={"f": 10.0}))
    p.function_defined(fn(), held("b", "c"))
    targets = [p.route("f", here_ms=None).node for _ in range(4)]  # type: ignore[union-attr]
    assert sorted(targets) == ["b", "b", "c", "c"]


def test_failover_tries_another_holder_once_and_skips_the_failed_one() -> None:
    p, clock = cluster()
    p.function_defined(fn(), held("b", "c"))
    first = p.route("f", here_ms=None)
    assert isinstance(first, Forward)
    other = p.failover("f", None, {first.node})
    assert isinstance(other, Forward) and other.node != first.node
    # The failed node is skipped by new requests until its next heartbeat's worth of time passes.
    for _ in range(3):
        assert p.route("f", here_ms=None).node == other.node  # type: ignore[union-attr]
    p.node_seen(rec(first.node, 1.0))  # the same heartbeat as before the failure: still skipped
    assert p.route("f", here_ms=None).node == other.node  # type: ignore[union-attr]
    clock.t += 3.1
    p.node_seen(rec(first.node, 9.0))
    p.node_seen(rec(other.node, 9.0))
    assert {p.route("f", here_ms=None).node for _ in range(4)} == {"b", "c"}  # type: ignore[union-attr]


def test_a_node_is_down_when_its_record_expired_not_by_this_nodes_clock() -> None:
    p, clock = cluster()
    clock.t += 60  # this node's loop was held up: that proves nothing about the others
    assert p.state_of("b") == NodeState.UP
    p.node_missing("b")  # Redis: its TTL ran out
    assert p.state_of("b") == NodeState.DOWN
    p.node_seen(rec("b", 5.0))  # back (a restarted node)
    assert p.state_of("b") == NodeState.UP
    assert p.state_of("nobody") == NodeState.DOWN
    p.node_seen(rec("c", 6.0, state=NodeState.DRAINING))
    assert p.state_of("c") == NodeState.DRAINING


def test_nothing_is_placed_while_redis_is_away() -> None:
    p, _ = cluster("a")  # a: the first of the equally roomy up nodes
    p.function_defined(fn(), held("c"))
    p.node_missing("c")
    p.reachability(False)
    assert p.plan(0, 0) == []
    p.reachability(True)
    assert p.plan(0, 0) == [Claim("f", "rehome")]


def test_no_live_holder_then_no_route_and_the_roomiest_up_node_rehomes() -> None:
    p, clock = cluster("a")
    p.node_seen(rec("a", 2.0, host_budget=100 * MB, host_used=50 * MB))
    p.node_seen(rec("b", 2.0, host_budget=100 * MB, host_used=10 * MB))
    p.node_seen(rec("c", 2.0, host_budget=100 * MB, host_used=0))
    p.function_defined(fn(), held("c"))
    p.node_missing("c")
    # Its record expired: still tried as a last resort (it may have missed one heartbeat)...
    assert p.route("f", here_ms=None) == Forward("c", "http://c", 1.0 + 10 * MB / 10e9 * 1e3 + 10.0)
    # ...and once that forward fails, nobody is left.
    assert isinstance(p.failover("f", None, {"c"}), NoHolder)
    assert isinstance(p.route("f", here_ms=None), NoHolder)
    assert p.plan(50 * MB, 100 * MB) == []  # b has more room: b claims it
    pb, _ = cluster("b")
    for r in p.nodes.values():
        pb.node_seen(r.record)
    pb.function_defined(fn(), held("c"))
    pb.node_missing("c")
    assert pb.plan(10 * MB, 100 * MB) == [Claim("f", "rehome")]


def test_a_node_loading_the_function_is_tried_when_nobody_else_holds_it() -> None:
    p, _ = cluster("a")
    p.function_defined(fn(), {"b": Hold(HoldState.LOADING, 7)})
    route = p.route("f", here_ms=None)
    assert isinstance(route, Forward) and route.node == "b"
    assert isinstance(p.failover("f", None, {"b"}), NoHolder)


def test_a_draining_holders_functions_are_rehomed_but_still_served() -> None:
    p, _ = cluster("a")
    p.node_seen(rec("b", 2.0, state=NodeState.DRAINING))
    p.node_seen(rec("c", 2.0, host_used=90 * MB, host_budget=100 * MB))
    p.function_defined(fn(), held("b"))
    assert isinstance(p.route("f", here_ms=None), Forward)  # b still serves while handing over
    assert p.plan(0, 0) == [Claim("f", "rehome")]


def test_a_replica_follows_the_forwarded_rate_and_fits_host_memory() -> None:
    p, clock = cluster("a", replica_rate=2.0, window_s=10.0)
    p.function_defined(fn(), held("b"))
    for i in range(19):
        p.route("f", here_ms=None)
        p.node_seen(rec("b", 2.0 + i))  # b keeps up: its queue stays empty
    assert p.plan(0, 0) == []
    p.route("f", here_ms=None)
    assert p.plan(0, 0) == [Claim("f", "replica")]
    assert p.plan(95 * MB, 100 * MB) == []  # no room for 10 MB
    clock.t += 11  # the burst is over
    assert p.plan(0, 0) == []


def test_a_replica_when_the_holders_cannot_meet_the_slo() -> None:
    p, _ = cluster("a")
    p.node_seen(rec("b", 2.0, queued=30, exec_ms={"f": 10.0}))
    p.function_defined(fn(slo_ms=100), held("b"))
    assert isinstance(p.route("f", here_ms=None), Forward)
    assert p.plan(0, 0) == [Claim("f", "replica")]


def test_a_holder_that_sheds_the_function_is_passed_over_and_a_replica_follows() -> None:
    p, _ = cluster("a")
    # b is the faster holder, but its admission refuses f: c gets the request.
    p.node_seen(rec("b", 2.0, exec_ms={"f": 10.0}, resident=("f",), shed=("f",)))
    p.node_seen(rec("c", 2.0, queued=3, exec_ms={"f": 10.0}))
    p.function_defined(fn(), held("b", "c"))
    route = p.route("f", here_ms=None)
    assert isinstance(route, Forward) and route.node == "c"
    # Held here but past the SLO, and the only other holder sheds it: run here.
    p.function_defined(fn(slo_ms=50), held("a", "b"))
    assert p.route("f", here_ms=80.0) == Local(80.0)
    # Held only by a node that sheds it: forwarded there (a 503 is all there is), and a
    # replica is wanted here.
    p.function_defined(fn(), held("b"))
    assert isinstance(p.route("f", here_ms=None), Forward)
    assert p.plan(0, 0) == [Claim("f", "replica")]


def test_the_shed_set_travels_in_the_heartbeat() -> None:
    r = rec("b", 2.0, shed=("f", "g"))
    assert NodeRecord.from_json(r.to_json()).shed == ("f", "g")
    assert NodeRecord.from_json(rec("b", 2.0).to_json()).shed == ()


def test_idle_replicas_leave_when_memory_is_needed_never_the_last_copy() -> None:
    p, clock = cluster("a", idle_s=30.0)
    p.function_defined(fn("f"), held("a", "b"))
    p.function_defined(fn("g"), held("a"))  # the only copy
    p.ran_here("f")
    p.ran_here("g")
    assert p.plan(120 * MB, 100 * MB) == []  # f ran just now
    clock.t += 31
    p.node_seen(rec("a", 50.0))
    p.node_seen(rec("b", 50.0))
    assert p.plan(120 * MB, 100 * MB) == [Release("f")]
    assert p.plan(20 * MB, 100 * MB) == []  # memory is not needed


def test_repr_names_the_node_and_what_is_up() -> None:
    p, _ = cluster("a")
    p.function_defined(fn(), held("b"))
    assert repr(p) == "<ClusterPolicy a nodes=3 up=['a', 'b', 'c'] functions=1>"
