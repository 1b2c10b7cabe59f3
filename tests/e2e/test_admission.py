"""Admission live: an overloaded node sheds one function with 503 + Retry-After and keeps serving the other.

A real server with one CPU device and a bound of 2% of its time (`--admit-utilization 0.02`),
so two resnet18 functions called back to back with a 1 ms SLO (every request late) overload
it at once; after the first review (10 s of traffic) one is shed.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from loadtest.server import Server
from tests.e2e.helpers import call_back_to_back

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(
        tmp_path_factory.mktemp("admit") / "state", "--admit-utilization", "0.02", devices="cpu:1", memory="256MiB"
    ).start()
    try:
        for name, seed in (("a", 1), ("b", 2)):
            r = srv.deploy(name, {"model": {"zoo": "resnet18", "seed": seed}, "slo_ms": 1})
            assert r.status_code == 201, r.text
        yield srv
    finally:
        srv.stop()


def test_an_overloaded_node_sheds_one_function_and_serves_the_other(server: Server) -> None:
    answers = call_back_to_back(server.url, ["a", "b"], 14.0, "resnet18")
    shed = [n for n, rs in answers.items() if rs[-1].status_code == 503]
    assert len(shed) == 1, {n: [r.status_code for r in rs[-3:]] for n, rs in answers.items()}
    (name,) = shed
    other = "b" if name == "a" else "a"
    last = answers[name][-1]
    assert last.headers["retry-after"] == "1"
    assert "is shed: this node is overloaded" in last.json()["error"]
    assert all(r.status_code == 200 for r in answers[other]), "the function kept is served throughout"
    assert any(r.status_code == 200 for r in answers[name]), "both were served before the review"
    view = server.client.get(f"/v1/functions/{name}").json()["schedule"]
    assert view["shed"] is True and view["predicted"]["completion_ms"] is None  # unbounded (JSON has no inf)
    assert server.client.get(f"/v1/functions/{other}").json()["schedule"]["shed"] is False
    metrics = server.client.get("/metrics").text
    assert "torpor_shed_functions 1.0" in metrics
    (ratio,) = [float(x.split()[1]) for x in metrics.splitlines() if x.startswith("torpor_admitted_demand_ratio ")]
    assert 0.05 < ratio <= 1.5, "what the one admitted function asks of the device (it is kept busy)"
    assert f'torpor_requests_total{{function="{name}",outcome="shed"}}' in metrics
