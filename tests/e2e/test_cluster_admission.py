"""Admission across a cluster: a node's shed set reaches its peers, which route around it.

Two real `torpor serve --cluster` nodes on a real redis-server. Node a holds two resnet18
functions with a 1 ms SLO (every request late) and a bound of 2% of its device's time, so
traffic at a sheds one of them after the first review (as in test_admission.py). Its
heartbeat then carries the shed set: b's view of a lists it, and a request for the shed
function sent to b — a is its only holder, and refuses it — makes b take a replica of its
own and serve it there.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from loadtest.cluster import REDIS_BINARY, RedisServer, node, wait_for
from loadtest.server import Server
from tests.e2e.helpers import call_back_to_back, sample_input

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not os.path.exists(REDIS_BINARY), reason="redis-server is not installed on this machine"),
]


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Server]]:
    root: Path = tmp_path_factory.mktemp("cluster-admit")
    redis = RedisServer(root / "redis").start()
    started: dict[str, Server] = {}
    try:
        for name in "ab":
            started[name] = node(root / name / "state", redis.url, name, "--admit-utilization", "0.02").start()
        for name, seed in (("f", 1), ("g", 2)):
            r = started["a"].deploy(name, {"model": {"zoo": "resnet18", "seed": seed}, "slo_ms": 1})
            assert r.status_code == 201, r.text
        yield started
    finally:
        for srv in started.values():
            srv.stop()
        redis.stop()


def _view_of(srv: Server, name: str) -> dict:
    return next(n for n in srv.client.get("/v1/nodes").json()["nodes"] if n["node"] == name)


def test_a_shed_function_is_served_by_a_replica_on_the_peer(nodes: dict[str, Server]) -> None:
    a, b = nodes["a"], nodes["b"]
    wait_for(lambda: _view_of(b, "a")["holds"] == ["f", "g"], timeout=10)
    assert _view_of(b, "a")["shed"] == []
    answers = call_back_to_back(a.url, ["f", "g"], 14.0, "resnet18")
    codes = {n: [r.status_code for r in rs] for n, rs in answers.items()}
    shed = [n for n, seen in codes.items() if seen[-1] == 503]
    assert len(shed) == 1, {n: seen[-3:] for n, seen in codes.items()}
    (name,) = shed
    # a's next heartbeat (every 0.5 s) tells b.
    wait_for(lambda: _view_of(b, "a")["shed"] == [name], timeout=5)
    # Sent to b, which does not hold it: the only holder refuses it, so b takes a replica.
    inputs = sample_input("resnet18")
    first = b.invoke(name, inputs)
    assert first.status_code in (200, 503), first.text

    def served_by_b() -> bool:
        r = b.invoke(name, inputs)
        return r.status_code == 200 and r.headers["x-torpor-node"] == "b"

    wait_for(served_by_b, timeout=30, interval=0.5)
    assert name in _view_of(b, "b")["holds"]
