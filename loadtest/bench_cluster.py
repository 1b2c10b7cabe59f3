"""Cluster costs measured side by side in one run, on a real Redis and real nodes.

    python -m loadtest.bench_cluster [--requests 1000] [--load-s 6]

(a) Forwarding: the same `mlp` request alternately sent to the node that holds it (local) and
    to a node that forwards it there, on one connection each; prints the added p50 and p99.
(b) Redis commands per invocation, from Redis's INFO commandstats: the commands counted while
    the requests of (a) ran, minus those of an idle window of the same length (heartbeats and
    the blocking stream reads go on either way), divided by the number of requests.
(c) kill -9 under load: a function with a replica on a second node keeps answering while one
    holder is killed (every failed request counted); a function without a replica is measured
    from the kill to its first answer again.
"""

from __future__ import annotations

import argparse
import os
import signal
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

from loadtest.cluster import RedisServer, node, wait_for
from loadtest.server import Server

BODY = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.5] * 64}]}


def pct(xs: list[float], p: float) -> float:
    return float(np.percentile(np.asarray(xs), p))


def commands(srv: RedisServer) -> int:
    stats = srv.client().info("commandstats")
    return sum(int(v["calls"]) for k, v in stats.items() if k.startswith("cmdstat_"))


def forwarding(redis: RedisServer, a: Server, b: Server, n: int) -> None:
    for _ in range(50):  # warm both paths and their keep-alive connections
        a.client.post("/v1/functions/mlp/invoke", json=BODY)
        b.client.post("/v1/functions/mlp/invoke", json=BODY)
    t0, c0 = time.perf_counter(), commands(redis)
    time.sleep(2.0)
    idle_s, idle = time.perf_counter() - t0, commands(redis) - c0
    local, forwarded = [], []
    t0, c0 = time.perf_counter(), commands(redis)
    for _ in range(n):
        for srv, out in ((a, local), (b, forwarded)):
            s = time.perf_counter()
            r = srv.client.post("/v1/functions/mlp/invoke", json=BODY)
            out.append((time.perf_counter() - s) * 1e3)
            assert r.status_code == 200 and r.headers["x-torpor-node"] == "a", r.text
    busy_s, busy = time.perf_counter() - t0, commands(redis) - c0
    extra = busy - idle * busy_s / idle_s
    print(f"(a) forwarding, {n} requests each, alternated on one connection per node")
    print(f"    local      p50 {pct(local, 50):6.3f} ms   p99 {pct(local, 99):6.3f} ms")
    print(f"    forwarded  p50 {pct(forwarded, 50):6.3f} ms   p99 {pct(forwarded, 99):6.3f} ms")
    print(
        f"    added by the hop: p50 {pct(forwarded, 50) - pct(local, 50):+.3f} ms, "
        f"p99 {pct(forwarded, 99) - pct(local, 99):+.3f} ms "
        f"(forwarded/local p50 {pct(forwarded, 50) / pct(local, 50):.2f}x)"
    )
    print(f"(b) Redis commands: {busy} while {2 * n} requests ran in {busy_s:.1f} s, {idle} in {idle_s:.1f} s idle")
    print(f"    => {max(0.0, extra) / (2 * n):.4f} Redis commands per invocation (background rate subtracted)")


class Load:
    """Sequential requests from one thread to one node, counting failures."""

    def __init__(self, srv: Server, name: str) -> None:
        self.client = httpx.Client(base_url=srv.url, timeout=30)
        self.name = name
        self.ok = 0
        self.failed: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                r = self.client.post(f"/v1/functions/{self.name}/invoke", json=BODY)
                if r.status_code == 200:
                    self.ok += 1
                else:
                    self.failed.append(f"{r.status_code} {r.text[:100]}")
            except httpx.HTTPError as exc:
                self.failed.append(repr(exc))
            time.sleep(0.005)

    def finish(self) -> None:
        self.stop.set()
        self.thread.join()
        self.client.close()


def holders(srv: Server, name: str) -> list[str]:
    return [n["node"] for n in srv.client.get("/v1/nodes").json()["nodes"] if name in n["holds"] and n["state"] == "up"]


def kill_under_load(nodes: dict[str, Server], load_s: float) -> None:
    a, b, c = nodes["a"], nodes["b"], nodes["c"]
    assert a.deploy("rep", {"model": {"zoo": "mlp", "seed": 1}, "slo_ms": 1000}).status_code == 201
    # c forwards rep to a at a high rate until it earns a replica of its own.
    warm = Load(c, "rep")
    wait_for(lambda: len(holders(b, "rep")) == 2, timeout=60, interval=0.2)
    warm.finish()
    load = Load(b, "rep")
    time.sleep(load_s / 2)
    held = holders(b, "rep")
    os.killpg(a.pid, signal.SIGKILL)
    time.sleep(load_s / 2)
    load.finish()
    print(f"(c) kill -9 of a under load on b, rep held by {held}:")
    print(f"    {load.ok} requests answered, {len(load.failed)} failed {load.failed[:3]}")
    assert c.deploy("solo", {"model": {"zoo": "mlp", "seed": 2}, "slo_ms": 1000}).status_code == 201
    wait_for(lambda: holders(b, "solo") == ["c"], timeout=10)
    load = Load(b, "solo")
    time.sleep(1.0)
    os.killpg(c.pid, signal.SIGKILL)
    killed = time.monotonic()
    before = load.ok
    wait_for(lambda: load.ok > before + 1, timeout=30, interval=0.01)
    back = time.monotonic() - killed
    load.finish()
    print(f"    without a replica: served again {back:.2f} s after the kill (goal 5 s; the TTL alone is 3 s)")
    print(
        f"    meanwhile {len(load.failed)} requests failed (503 while nobody held it): {sorted(set(load.failed))[:2]}"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--load-s", type=float, default=6.0)
    args = ap.parse_args()
    print(time.strftime("measured %Y-%m-%d %H:%M:%S UTC", time.gmtime()), f"on {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        redis = RedisServer(root / "redis").start()
        # a and b never replicate, so every request sent to b is forwarded to a for (a)
        # (a node claims a replica of what it forwards); c may, for (c).
        nodes = {
            n: node(root / n / "state", redis.url, n, *(() if n == "c" else ("--max-replicas", "1"))) for n in "abc"
        }
        try:
            for srv in nodes.values():
                srv.start()
            wait_for(lambda: all(x["state"] == "up" for x in nodes["a"].client.get("/v1/nodes").json()["nodes"]))
            assert nodes["a"].deploy("mlp", {"model": {"zoo": "mlp"}, "slo_ms": 1000}).status_code == 201
            wait_for(lambda: nodes["b"].client.get("/v1/functions/mlp").status_code == 200)
            forwarding(redis, nodes["a"], nodes["b"], args.requests)
            kill_under_load(nodes, args.load_s)
        finally:
            for srv in nodes.values():
                srv.stop(timeout=20)
            redis.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
