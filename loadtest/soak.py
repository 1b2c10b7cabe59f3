"""A soak: mixed load on a real server for a while, with workers killed periodically.

    python -m loadtest.soak [--duration 600] [--clients 4] [--kill-every 60]

Reports requests sent, answered, succeeded, failed by reason, lost (no answer at
all; must be 0), p50/p99 latency outside kill windows, and the RSS of the gateway
and of the workers at start vs end. Traffic goes only to a server it starts on
127.0.0.1, and every loop is bounded by the duration.
"""

from __future__ import annotations

import argparse
import collections
import os
import random
import signal
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

from loadtest.server import Server

FUNCTIONS = {"mlp": "mlp", "r18": "resnet18", "r50": "resnet50", "bert": "bert-base"}
WEIGHTS = [0.5, 0.2, 0.2, 0.1]  # mostly light requests, some heavy ones
KILL_WINDOW_S = 10.0  # requests sent this soon after a kill count as "in a kill window"
SETTLE_S = 60.0  # a process's memory baseline is taken this long into its life under load


def rss_mb(pid: int, field: str = "RssAnon") -> float:
    """Private (anonymous) resident memory by default: what a leak grows. VmRSS also
    counts the shared model images and arenas a worker maps, which grow as it touches them."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def body_for(zoo_name: str, rng: random.Random) -> dict:
    if zoo_name == "bert-base":
        return {
            "inputs": [
                {
                    "name": "input_ids",
                    "shape": [1, 32],
                    "datatype": "INT64",
                    "data": [rng.randrange(30522) for _ in range(32)],
                }
            ]
        }
    if zoo_name == "mlp":
        return {
            "inputs": [
                {"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [rng.random() for _ in range(64)]}
            ]
        }
    return {
        "inputs": [{"name": "input", "shape": [1, 3, 224, 224], "datatype": "FP32", "data": [0.5] * (3 * 224 * 224)}]
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=600.0)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--kill-every", type=float, default=60.0)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        srv = Server(Path(tmp) / "state", memory="512MiB").start()
        for name, zoo_name in FUNCTIONS.items():
            assert srv.deploy(name, {"model": {"zoo": zoo_name}, "slo_ms": 5000}).status_code == 201

        def worker_pids() -> list[int]:
            return [d["pid"] for d in srv.client.get("/v1/devices").json()["devices"] if d["pid"]]

        # Warm-up (every function, several times, so both devices run each) so the
        # start-of-run figure includes what steady serving needs.
        for _ in range(3):
            for name, zoo_name in FUNCTIONS.items():
                srv.client.post(f"/v1/functions/{name}/invoke", json=body_for(zoo_name, random.Random(0)))
        # Memory samples per process: (seconds since it was first seen, private RSS).
        samples: dict[int, list[tuple[float, float]]] = collections.defaultdict(list)

        records: list[tuple[float, float, int, str]] = []  # (sent at, latency s, status, reason)
        lock = threading.Lock()
        kills: list[float] = []
        stop_at = time.monotonic() + args.duration
        t0 = time.monotonic()

        def client(seed: int) -> None:
            rng = random.Random(seed)
            with httpx.Client(base_url=srv.url, timeout=120) as c:
                while time.monotonic() < stop_at:
                    name = rng.choices(list(FUNCTIONS), WEIGHTS)[0]
                    sent = time.monotonic()
                    try:
                        r = c.post(f"/v1/functions/{name}/invoke", json=body_for(FUNCTIONS[name], rng))
                        status = r.status_code
                        reason = "ok" if status == 200 else f"{status} {r.json().get('error', '')[:60]}"
                    except httpx.HTTPError as exc:
                        status, reason = 0, f"lost: {type(exc).__name__}"
                    with lock:
                        records.append((sent - t0, time.monotonic() - sent, status, reason))

        def killer() -> None:
            rng = random.Random(1)
            while time.monotonic() + args.kill_every < stop_at:
                time.sleep(args.kill_every)
                pids = worker_pids()
                if pids:
                    os.kill(rng.choice(pids), signal.SIGKILL)
                    kills.append(time.monotonic() - t0)

        def sampler() -> None:
            first: dict[int, float] = {}
            while time.monotonic() < stop_at:
                now = time.monotonic()
                for pid in [srv.pid, *worker_pids()]:
                    first.setdefault(pid, now)
                    samples[pid].append((now - first[pid], rss_mb(pid)))
                time.sleep(5)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
        threads.append(threading.Thread(target=sampler, daemon=True))
        threads.append(threading.Thread(target=killer, daemon=True))
        for t in threads:
            t.start()
        for t in threads[: args.clients]:
            t.join()
        gateway_pid = srv.pid
        srv.stop()

    answered = [r for r in records if r[2] != 0]
    ok = [r for r in records if r[2] == 200]
    outside = [r[1] * 1e3 for r in ok if not any(k <= r[0] <= k + KILL_WINDOW_S for k in kills)]
    reasons = collections.Counter(r[3] for r in records if r[2] != 200)
    print(
        f"duration {args.duration:.0f} s, {args.clients} clients, "
        f"{len(kills)} worker kills (every {args.kill_every:g} s)"
    )
    print(
        f"sent {len(records)}  answered {len(answered)}  succeeded {len(ok)}  failed {len(answered) - len(ok)}  "
        f"lost {len(records) - len(answered)}"
    )
    for reason, n in reasons.most_common():
        print(f"  {n:6d}  {reason}")
    if outside:
        print(
            f"latency outside kill windows: p50 {np.percentile(outside, 50):.1f} ms, "
            f"p99 {np.percentile(outside, 99):.1f} ms"
        )
    # Drift per process: private RSS once settled (SETTLE_S into its life) vs its last sample.
    for pid, series in sorted(samples.items(), key=lambda kv: kv[0] != gateway_pid):
        settled = [rss for age, rss in series if age >= SETTLE_S]
        if len(settled) < 2 or settled[0] == 0:
            continue  # a worker killed before it settled
        a, b = settled[0], settled[-1]
        label = "gateway" if pid == gateway_pid else f"worker pid {pid}"
        life = series[-1][0]
        print(
            f"private RSS {label}: {a:.0f} MiB -> {b:.0f} MiB ({(b - a) / a * 100:+.1f}%) over {life - SETTLE_S:.0f} s"
        )


if __name__ == "__main__":
    main()
