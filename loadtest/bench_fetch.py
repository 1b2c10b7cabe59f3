"""Image transfer between nodes, measured side by side in one run on a real Redis and real nodes.

    python -m loadtest.bench_fetch [--model bert-base] [--repeats 3]

(a) Fetch bandwidth from 1 holder and from 2 holders, alternated: this process runs the very
    fetch a node runs (shared/rangefetch.py: range requests to the holders' endpoint, every
    chunk checked) into a buffer of its own.
(b) A cold request on a new node: a node that holds nothing is asked to `load` the function
    (its image comes from both holders) and is sent a request as soon as the load returns; the
    request is timed from the load call to its answer, against max(fetch, copy, exec) of the
    model -- fetch from (a), copy = a plain memcpy of the image, exec = a warm request on that
    node -- and against their sum (no overlap). Each repeat starts a fresh node, which first
    brings in another function of the same architecture the same way ("first"): its worker then
    has the program built and traced, so the second ("cold") measures the transfer itself.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from loadtest.cluster import TOKEN, RedisServer, node, wait_for
from loadtest.server import Server
from shared.rangefetch import Holder, ImageLayout, RangeFetch, fetch_header
from tests.e2e.helpers import sample_input

HEADERS = {"x-torpor-cluster-token": TOKEN, "x-torpor-forwarded-by": "bench"}
PEER = dict(HEADERS)  # a request sent as by a peer runs where it is sent


def start(nodes: list[Server]) -> None:
    threads = [threading.Thread(target=n.start) for n in nodes]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def holds(redis: RedisServer, fn: str) -> dict[str, str]:
    return {n: v.split(":")[1] for n, v in redis.client().hgetall("{torpor}:place:" + fn).items()}


def fetch_once(layout: ImageLayout, holders: list[Holder], dest: bytearray) -> float:
    report = RangeFetch(layout, holders, dest, HEADERS).run()
    return report.seconds


def memcpy_s(nbytes: int, repeats: int = 5) -> float:
    src, dst = np.ones(nbytes, np.uint8), np.empty(nbytes, np.uint8)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        np.copyto(dst, src)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="bert-base")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--memory", default="512MiB", help="each node's CPU device")
    args = p.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-fetch-"))
    redis = RedisServer(root / "redis").start()

    def mk(name: str) -> Server:
        return node(root / name / "state", redis.url, name, "--max-replicas", "8", memory=args.memory)

    mk_nodes = [mk("a"), mk("b")]
    started: list[Server] = []
    try:
        start(mk_nodes)
        started += mk_nodes
        a, b = mk_nodes
        fn = "f"
        for name, seed in ((fn, 0), ("g", 1)):
            r = a.deploy(name, {"model": {"zoo": args.model, "seed": seed}, "slo_ms": 60_000})
            assert r.status_code == 201, r.text
            wait_for(lambda name=name: b.client.get(f"/v1/functions/{name}").status_code == 200, 10)
            r = b.client.post(f"/v2/repository/models/{name}/load", json={})
            assert r.status_code == 200, r.text
            wait_for(lambda name=name: holds(redis, name).get("b") == "host", 120, 0.1)
        header = fetch_header(Holder("a", a.url), f"{fn}@1", HEADERS)
        layout = ImageLayout(f"{fn}@1", header["nbytes"], header["chunk_bytes"], tuple(header["checksums"]))
        dest = bytearray(layout.nbytes)
        one, two = [Holder("a", a.url)], [Holder("a", a.url), Holder("b", b.url)]
        fetch_once(layout, two, dest)  # warm the holders' page cache and connections
        t1, t2 = [], []
        for _ in range(args.repeats):
            t1.append(fetch_once(layout, one, dest))
            t2.append(fetch_once(layout, two, dest))
        f1, f2 = statistics.median(t1), statistics.median(t2)
        mib = layout.nbytes / 2**20
        print(f"{args.model}: image {mib:.1f} MiB; nodes with 1 CPU device, 1 compute thread; median of {args.repeats}")
        print("(a) fetch (range requests, every 4 MiB chunk checked)")
        print(f"    from 1 holder   {f1 * 1e3:8.1f} ms  {layout.nbytes / f1 / 1e9:5.2f} GB/s")
        print(
            f"    from 2 holders  {f2 * 1e3:8.1f} ms  {layout.nbytes / f2 / 1e9:5.2f} GB/s   "
            f"bandwidth 2 holders / 1: {f1 / f2:.2f}x"
        )
        copy = memcpy_s(layout.nbytes)
        inputs = sample_input(args.model)
        firsts, colds, loads, warms, fetched = [], [], [], [], []
        for i in range(args.repeats):
            c = mk(f"c{i}")
            c.start()
            started.append(c)
            wait_for(lambda c=c: c.client.get(f"/v1/functions/{fn}").status_code == 200, 10)
            for name, out in (("g", firsts), (fn, colds)):
                t = time.perf_counter()
                r = c.client.post(f"/v2/repository/models/{name}/load", json={})
                assert r.status_code == 200, r.text
                if name == fn:
                    loads.append(time.perf_counter() - t)
                r = c.client.post(f"/v1/functions/{name}/invoke", json={"inputs": inputs}, headers=PEER)
                out.append(time.perf_counter() - t)
                assert r.status_code == 200 and r.headers["x-torpor-node"] == f"c{i}", r.text
                wait_for(lambda c=c, i=i, name=name: holds(redis, name).get(f"c{i}") == "host", 60, 0.05)
            fetched.append(c.client.get(f"/v1/functions/{fn}").json()["image_fetch"]["seconds"])
            w = []
            for _ in range(3):
                t = time.perf_counter()
                c.client.post(f"/v1/functions/{fn}/invoke", json={"inputs": inputs}, headers=PEER)
                w.append(time.perf_counter() - t)
            warms.append(min(w))
            c.stop()
            started.remove(c)
        cold, warm = statistics.median(colds), statistics.median(warms)
        bound = max(f2, copy, warm)
        print(f"(b) cold request on a new node (load, then the request at once; {args.repeats} fresh nodes)")
        print(
            f"    fetch (2 holders) {f2 * 1e3:7.1f} ms   copy (memcpy) {copy * 1e3:6.1f} ms   "
            f"exec (warm) {warm * 1e3:6.1f} ms"
        )
        print(
            f"    the node's own fetch while serving it: {statistics.median(fetched) * 1e3:.1f} ms; "
            f"the load returned after {statistics.median(loads) * 1e3:.1f} ms (claim, header, prepare)"
        )
        print(
            f"    cold {cold * 1e3:7.1f} ms   cold / max(fetch, copy, exec) {cold / bound:.2f}   "
            f"cold / (fetch + copy + exec) {cold / (f2 + copy + warm):.2f}"
        )
        print(f"    (cold per repeat: {', '.join(f'{x * 1e3:.0f}' for x in colds)} ms)")
        print(
            f"    first function of the architecture on the fresh node: {statistics.median(firsts) * 1e3:.1f} ms "
            "(its worker builds and traces the program too)"
        )
    finally:
        for n in started:
            n.stop()
        redis.stop()


if __name__ == "__main__":
    main()
