"""A function's image fetched by range requests from several holders, as real processes.

A real redis-server and four `torpor serve --cluster` nodes; b is reached through a
fault-injecting proxy (loadtest/faultproxy.py, its own process) that damages image ranges while
a file exists. The function's SLO is one no holder can meet from another node (1 ms), so a node
that forwards a request claims a replica of its own and fetches the image (the policy's "holders
too slow" rule). Run in file order on one cluster.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from loadtest.cluster import REDIS_BINARY, TOKEN, RedisServer, node, wait_for
from loadtest.server import Server, free_port
from shared import imagefile
from tests.e2e.helpers import native_output, output_array, sample_input

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not os.path.exists(REDIS_BINARY), reason="redis-server is not installed on this machine"),
]

FN = "r18"
PEER = {"x-torpor-forwarded-by": "test", "x-torpor-cluster-token": TOKEN}  # run where it is sent, never forwarded


class Cluster:
    def __init__(self, root: Path) -> None:
        self.redis = RedisServer(root / "redis").start()
        self.corrupt = root / "corrupt-b"
        proxy_port = free_port()
        args = ("--max-replicas", "4")
        self.nodes: dict[str, Server] = {n: node(root / n / "state", self.redis.url, n, *args) for n in "acd"}
        self.nodes["b"] = node(
            root / "b" / "state", self.redis.url, "b", *args, "--advertise", f"http://127.0.0.1:{proxy_port}"
        )
        self.proxy = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "loadtest.faultproxy",
                "--port",
                str(proxy_port),
                "--target",
                self.nodes["b"].url,
                "--corrupt-when",
                str(self.corrupt),
            ],
        )
        threads = [threading.Thread(target=n.start) for n in self.nodes.values()]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for name, n in self.nodes.items():
            assert n.proc is not None and n.proc.poll() is None, f"node {name} did not start:\n{n.log()}"

    def __getitem__(self, name: str) -> Server:
        return self.nodes[name]

    def holds(self) -> dict[str, str]:
        """node -> hold state of FN in Redis ("host" once its image is whole there)."""
        raw = self.redis.client().hgetall("{torpor}:place:" + FN)
        return {n: v.split(":")[1] for n, v in raw.items()}

    def stop(self) -> None:
        threads = [threading.Thread(target=n.stop) for n in self.nodes.values()]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.proxy.terminate()
        self.proxy.wait(10)
        self.redis.stop()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("fetch"))
    try:
        wait_for(lambda: all(_up(n) == 4 for n in c.nodes.values()), timeout=15)
        yield c
    finally:
        c.stop()


def _up(srv: Server) -> int:
    try:
        return sum(n["state"] == "up" for n in srv.client.get("/v1/nodes").json()["nodes"])
    except httpx.HTTPError:
        return 0


def _replica_from_a_request(cluster: Cluster, name: str) -> dict[str, object]:
    """Invoke on `name` (forwarded: it holds nothing), wait for its own copy; its fetch report."""
    inputs = sample_input("resnet18")
    r = cluster[name].invoke(FN, inputs)
    assert r.status_code == 200 and r.headers.get("x-torpor-forwarded-by") == name, r.text
    wait_for(lambda: cluster.holds().get(name) == "host", timeout=30, interval=0.1)
    described = cluster[name].client.get(f"/v1/functions/{FN}").json()
    assert described["tier"] in ("host", "device"), described
    return described["image_fetch"]


def _runs_bitwise_on(cluster: Cluster, name: str) -> None:
    inputs = sample_input("resnet18", seed=4)
    r = cluster[name].client.post(f"/v1/functions/{FN}/invoke", json={"inputs": inputs}, headers=PEER)
    assert r.status_code == 200 and r.headers["x-torpor-node"] == name, r.text
    assert output_array(r.json()).tobytes() == native_output("resnet18", inputs).tobytes()


def test_a_node_fetches_the_image_from_both_holders_and_runs_it_bitwise_equal(cluster: Cluster) -> None:
    r = cluster["a"].deploy(FN, {"model": {"zoo": "resnet18"}, "slo_ms": 1})
    assert r.status_code == 201, r.text
    wait_for(lambda: all(n.client.get(f"/v1/functions/{FN}").status_code == 200 for n in cluster.nodes.values()), 5)
    first = _replica_from_a_request(cluster, "b")  # b fetches from a alone
    assert first["from"] == ["a"] and first["bytes_from"] == {"a": first["bytes"]}, first
    both = _replica_from_a_request(cluster, "c")  # c from a and b, in parallel
    assert sorted(both["from"]) == ["a", "b"] and not both["failures"], both
    assert all(both["bytes_from"][n] > 0 for n in "ab") and sum(both["bytes_from"].values()) == both["bytes"]
    _runs_bitwise_on(cluster, "c")
    # Its file is written in the background (a restart reads it), in the image file format.
    images = cluster["c"].state_dir / "images"
    wait_for(lambda: any(images.glob("*.img")), timeout=30)
    (path,) = images.glob("*.img")
    assert imagefile.read_info(path).model_id == f"{FN}@1"


def test_a_holder_serving_damaged_ranges_is_dropped_and_the_output_is_still_bitwise_equal(cluster: Cluster) -> None:
    cluster.corrupt.touch()  # from now on every image range through b's proxy has a flipped byte
    report = _replica_from_a_request(cluster, "d")
    assert sorted(report["from"]) == ["a", "b", "c"], report
    assert "checksum" in report["failures"]["b"] and report["bytes_from"]["b"] == 0, report
    assert report["retried"] >= 1 and sum(report["bytes_from"].values()) == report["bytes"]
    _runs_bitwise_on(cluster, "d")
