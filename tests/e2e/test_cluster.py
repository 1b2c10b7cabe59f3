"""Three `torpor serve --cluster` nodes as real processes on one real redis-server.

Deploy anywhere, invoke anywhere (bitwise equal outputs), concurrent replaces with one winner,
delete everywhere, a wrong cluster token refused, Redis stopped and restarted under the nodes
(once with a holder frozen meanwhile), and a node killed with SIGKILL whose function serves
again elsewhere. The tests run in file order on one cluster; the destructive ones come last.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from gateway.cluster.store import node_key
from loadtest.cluster import REDIS_BINARY, TOKEN, RedisServer, node, wait_for
from loadtest.server import Server
from tests.e2e.helpers import native_output, output_array, sample_input
from tests.e2e.test_lifecycle import _export

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not os.path.exists(REDIS_BINARY), reason="redis-server is not installed on this machine"),
]


class Cluster:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.redis = RedisServer(root / "redis").start()
        self.nodes = {n: node(root / n / "state", self.redis.url, n) for n in "abc"}
        threads = [threading.Thread(target=n.start) for n in self.nodes.values()]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for name, n in self.nodes.items():
            assert n.proc is not None and n.proc.poll() is None, f"node {name} did not start:\n{n.log()}"

    def __getitem__(self, name: str) -> Server:
        return self.nodes[name]

    def stop(self) -> None:
        threads = [threading.Thread(target=n.stop) for n in self.nodes.values()]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.redis.stop()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("cluster"))
    try:
        wait_for(lambda: all(len(_up(n)) == 3 for n in c.nodes.values()), timeout=15)
        yield c
    finally:
        c.stop()


def _up(srv: Server) -> list[str]:
    try:
        nodes = srv.client.get("/v1/nodes").json()["nodes"]
    except httpx.HTTPError:
        return []
    return [n["node"] for n in nodes if n["state"] == "up"]


def _known(srv: Server, name: str) -> bool:
    return srv.client.get(f"/v1/functions/{name}").status_code == 200


def test_deploy_on_a_invoke_on_b_and_c_bitwise_equal(cluster: Cluster) -> None:
    r = cluster["a"].deploy("mlp", {"model": {"zoo": "mlp"}, "slo_ms": 2000})
    assert r.status_code == 201, r.text
    seen = wait_for(lambda: _known(cluster["b"], "mlp") and _known(cluster["c"], "mlp"), timeout=5)
    assert seen < 1.0, f"the deploy took {seen:.2f} s to reach the other nodes"
    inputs = sample_input("mlp", batch=2, seed=3)
    outputs = {}
    for name in "abc":
        r = cluster[name].invoke("mlp", inputs)
        assert r.status_code == 200, r.text
        assert r.headers["x-torpor-node"] == "a"  # only a holds it; one request is no reason for a replica
        assert r.headers.get("x-torpor-forwarded-by") == (None if name == "a" else name)
        outputs[name] = output_array(r.json())
    assert outputs["a"].tobytes() == outputs["b"].tobytes() == outputs["c"].tobytes()
    np.testing.assert_allclose(outputs["a"], native_output("mlp", inputs), rtol=1e-5, atol=1e-6)
    # Bad input is refused by the node that runs it, through the forward, with the same message.
    r = cluster["b"].invoke("mlp", [{"name": "input", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}])
    assert r.status_code == 400 and "input" in r.json()["error"], r.text


def test_nodes_listing_and_cli(cluster: Cluster) -> None:
    def a_holds_mlp(seen_from: str) -> bool:  # as of a's next heartbeat (every 0.5 s), in that node's view
        nodes = cluster[seen_from].client.get("/v1/nodes").json()["nodes"]
        return any(n["node"] == "a" and n["holds"] == ["mlp"] for n in nodes)

    # Each node keeps its own view: wait for both nodes asked below.
    wait_for(lambda: a_holds_mlp("c") and a_holds_mlp("b"), timeout=3)
    body = cluster["c"].client.get("/v1/nodes").json()
    assert body["node"] == "c"
    by_name = {n["node"]: n for n in body["nodes"]}
    assert sorted(by_name) == ["a", "b", "c"]
    assert all(n["state"] == "up" and n["heartbeat_age_s"] < 3 for n in by_name.values())
    assert by_name["a"]["holds"] == ["mlp"] and by_name["a"]["host_used_bytes"] > 0, body
    assert by_name["a"]["url"] == cluster["a"].url and by_name["a"]["devices"] == 1
    out = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "ls", "--nodes", "--url", cluster["b"].url],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split()[:3] == ["NODE", "URL", "STATE"]
    assert any(line.startswith("b *") for line in lines), out.stdout
    assert any("mlp" in line for line in lines if line[0] == "a"), out.stdout


def test_wrong_cluster_token_refused(cluster: Cluster) -> None:
    a = cluster["a"]
    body = {"inputs": sample_input("mlp")}
    for headers in ({"x-torpor-forwarded-by": "b"}, {"x-torpor-forwarded-by": "b", "x-torpor-cluster-token": "wrong"}):
        r = a.client.post("/v1/functions/mlp/invoke", json=body, headers=headers)
        assert r.status_code == 401 and "cluster token" in r.json()["error"], r.text
    r = a.client.get(f"/internal/v1/artifacts/{'0' * 64}")
    assert r.status_code == 401
    r = a.client.get(f"/internal/v1/artifacts/{'0' * 64}", headers={"x-torpor-cluster-token": TOKEN})
    assert r.status_code == 404
    headers = {"x-torpor-forwarded-by": "b", "x-torpor-cluster-token": TOKEN}
    r = a.client.post("/v1/functions/mlp/invoke", json=body, headers=headers)
    assert r.status_code == 200 and r.headers["x-torpor-node"] == "a"


def test_concurrent_replaces_end_with_one_winner(cluster: Cluster) -> None:
    results: dict[str, httpx.Response] = {}

    def put(name: str, seed: int) -> None:
        results[name] = cluster[name].deploy("race", {"model": {"zoo": "mlp", "seed": seed}, "slo_ms": 2000})

    threads = [threading.Thread(target=put, args=(n, s)) for n, s in (("b", 1), ("c", 2))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    codes = sorted(r.status_code for r in results.values())
    assert codes in ([200, 201], [201, 201], [201, 409]), {n: r.text for n, r in results.items()}

    def settled() -> bool:
        views = [cluster[n].client.get("/v1/functions/race").json() for n in "abc"]
        return len({(v["version"], v["model"]["seed"]) for v in views}) == 1

    wait_for(settled, timeout=5)
    winner = cluster["a"].client.get("/v1/functions/race").json()
    seed = winner["model"]["seed"]
    inputs = sample_input("mlp", seed=5)
    expected = native_output("mlp", inputs, seed=seed)
    for n in "abc":
        r = cluster[n].invoke("race", inputs)
        if r.status_code != 200:  # say what each node believed
            views = {m: cluster[m].client.get("/v1/functions/race").json().get("held_by") for m in "abc"}
            raise AssertionError((n, r.text, views))
        np.testing.assert_allclose(output_array(r.json()), expected, rtol=1e-5, atol=1e-6)

    def holders() -> set[str]:
        return {n["node"] for n in cluster["a"].client.get("/v1/nodes").json()["nodes"] if "race" in n["holds"]}

    # The loser's copy is dropped: one holder, the winner's deployer.
    wait_for(lambda: len(holders()) == 1, timeout=3)
    assert holders() <= {"b", "c"}


def test_delete_everywhere(cluster: Cluster) -> None:
    r = cluster["c"].deploy("gone", {"model": {"zoo": "mlp", "seed": 7}, "slo_ms": 2000})
    assert r.status_code == 201, r.text
    # At once, on another node: the registry has it before b's view does, and the delete goes by the registry.
    r = cluster["b"].client.delete("/v1/functions/gone")
    assert r.status_code == 200, r.text
    assert cluster["b"].client.delete("/v1/functions/gone").status_code == 404
    assert cluster["a"].client.delete("/v1/functions/never-deployed").status_code == 404
    took = wait_for(lambda: not any(_known(cluster[n], "gone") for n in "abc"), timeout=5)
    assert took < 1.0
    for n in "abc":
        assert cluster[n].invoke("gone", sample_input("mlp")).status_code == 404
    wait_for(lambda: all("gone" not in x["holds"] for x in cluster["a"].client.get("/v1/nodes").json()["nodes"]), 5)


def test_redis_stopped_and_restarted(cluster: Cluster) -> None:
    cluster.redis.stop()
    try:
        time.sleep(1.0)
        inputs = sample_input("mlp")
        for n in "abc":  # serving goes on from each node's local view
            r = cluster[n].invoke("mlp", inputs)
            assert r.status_code == 200 and r.headers["x-torpor-node"] == "a", r.text
        r = cluster["b"].deploy("later", {"model": {"zoo": "mlp"}, "slo_ms": 2000})
        assert r.status_code == 503 and "Redis" in r.json()["error"], r.text
        assert cluster["b"].client.delete("/v1/functions/mlp").status_code == 503
        assert _known(cluster["b"], "mlp")
    finally:
        cluster.redis = RedisServer(cluster.root / "redis", port=cluster.redis.port).start()
    # The new Redis starts empty: the nodes write back what they hold.
    rd = cluster.redis.client()
    wait_for(lambda: rd.hexists("{torpor}:fns", "mlp") and rd.hexists("{torpor}:fns", "race"), timeout=10)
    wait_for(lambda: all(len(_up(cluster[n])) == 3 for n in "abc"), timeout=10)
    r = cluster["b"].deploy("later", {"model": {"zoo": "mlp"}, "slo_ms": 2000})
    assert r.status_code == 201, r.text
    wait_for(lambda: _known(cluster["a"], "later"), timeout=5)
    assert cluster["c"].invoke("mlp", sample_input("mlp")).status_code == 200


def test_a_holder_frozen_while_redis_restarts_keeps_its_copy(cluster: Cluster) -> None:
    """Redis restarts empty while mlp's only holder is frozen (a long pause, a stalled VM).

    On resuming, that node reads a registry without mlp before its heartbeat runs: it must
    declare its copy again, not drop the only one; the other nodes route to it meanwhile.
    """
    a = cluster["a"]
    os.kill(a.pid, signal.SIGSTOP)
    try:
        cluster.redis.stop()
        cluster.redis = RedisServer(cluster.root / "redis", port=cluster.redis.port).start()
        rd = cluster.redis.client()
        wait_for(lambda: rd.exists(node_key("c")) == 1, timeout=10)
        assert _known(cluster["c"], "mlp")  # not declared again yet, but not forgotten
        time.sleep(5.5)  # past a's resync period: on resuming, it reads the registry at once
    finally:
        os.kill(a.pid, signal.SIGCONT)
    wait_for(lambda: rd.hexists("{torpor}:fns", "mlp"), timeout=10)
    r = cluster["c"].invoke("mlp", sample_input("mlp"))
    assert r.status_code == 200 and r.headers["x-torpor-node"] == "a", r.text
    assert "lost its data" in a.log()


def test_kill_9_node_its_function_serves_again(cluster: Cluster, tmp_path: Path) -> None:
    r = cluster["c"].deploy("solo", {"model": {"zoo": "mlp", "seed": 9}, "slo_ms": 2000})
    assert r.status_code == 201, r.text
    # A user's .pt2 held by c alone: the other nodes keep a digest-checked copy of the file.
    user_file = tmp_path / "tiny.pt2"
    reference = _export(user_file)
    digest = hashlib.sha256(user_file.read_bytes()).hexdigest()
    r = cluster["c"].deploy("tiny", {"model": {"path": str(user_file)}, "slo_ms": 2000})
    assert r.status_code == 201, r.text
    peer = {"x-torpor-cluster-token": TOKEN}
    url = f"/internal/v1/artifacts/{digest}"
    wait_for(lambda: all(cluster[n].client.get(url, headers=peer).status_code == 200 for n in "ab"))
    assert cluster["a"].client.get(url, headers=peer).content == user_file.read_bytes()
    wait_for(lambda: _known(cluster["a"], "solo"), timeout=5)
    inputs = sample_input("mlp")
    assert cluster["a"].invoke("solo", inputs).headers["x-torpor-node"] == "c"
    os.killpg(cluster["c"].pid, signal.SIGKILL)
    killed = time.monotonic()
    # Within the heartbeat TTL (3 s) c is down; then a or b rebuilds solo from its definition.
    wait_for(lambda: "c" not in _up(cluster["a"]), timeout=10)
    wait_for(lambda: all(cluster[n].invoke("solo", inputs).status_code == 200 for n in "ab"), timeout=15, interval=0.2)
    took = time.monotonic() - killed
    r = cluster["b"].invoke("solo", inputs)
    assert r.status_code == 200 and r.headers["x-torpor-node"] in ("a", "b"), r.text
    np.testing.assert_allclose(output_array(r.json()), native_output("mlp", inputs, seed=9), rtol=1e-5, atol=1e-6)
    x = np.random.default_rng(0).standard_normal((3, 16)).astype(np.float32)
    body = [{"name": "x", "shape": [3, 16], "datatype": "FP32", "data": x.ravel().tolist()}]
    wait_for(lambda: cluster["a"].invoke("tiny", body).status_code == 200, timeout=10, interval=0.2)
    torch.set_num_threads(1)
    want = reference(torch.from_numpy(x)).detach().numpy()
    assert output_array(cluster["b"].invoke("tiny", body).json()).tobytes() == want.tobytes()
    states = {n["node"]: n["state"] for n in cluster["b"].client.get("/v1/nodes").json()["nodes"]}
    assert states["c"] == "down"
    assert took < 8.0, f"solo served again {took:.1f} s after the kill"


def test_restarted_node_rejoins_and_hands_over_when_stopped(cluster: Cluster) -> None:
    c = cluster["c"]
    c.stop()  # after the kill -9 above: reap it and close its log
    restarted = node(c.state_dir, cluster.redis.url, "c")
    cluster.nodes["c"] = restarted
    restarted.start()
    # Back with its state dir: what it held is declared again, next to the copies made meanwhile.
    wait_for(lambda: "c" in _up(cluster["a"]) and "solo" in _holds(cluster["a"], "c"), timeout=10)
    r = restarted.deploy("handover", {"model": {"zoo": "mlp", "seed": 11}, "slo_ms": 2000})
    assert r.status_code == 201, r.text
    wait_for(lambda: _known(cluster["a"], "handover"), timeout=5)
    # SIGINT: c drains; its only copy of handover moves before it leaves.
    assert restarted.stop() == 0, restarted.log()
    # a's view follows the registry's events: the copy made before c left, c's leaving.
    wait_for(lambda: any("handover" in _holds(cluster["a"], n) for n in "ab"), timeout=3)
    r = cluster["a"].invoke("handover", sample_input("mlp"))
    assert r.status_code == 200 and r.headers["x-torpor-node"] in ("a", "b"), r.text
    wait_for(lambda: "c" not in _up(cluster["b"]), timeout=3)


def _holds(srv: Server, name: str) -> list[str]:
    return next((n["holds"] for n in srv.client.get("/v1/nodes").json()["nodes"] if n["node"] == name), [])
