"""Time to ready after a restart, against an empty server's own start, side by side in one run.

    python -m loadtest.bench_restart [--functions bert-base,resnet152,resnet50,resnet18,mlp] [--repeats 3]
    python -m loadtest.bench_restart --functions bert-base --copies 23 --repeats 1   # ~10 GB of images

Each round starts real `torpor serve` processes (2 CPU devices) and times Popen -> /v2/health/ready:
  empty        a server with an empty state dir (the floor: workers, arenas, HTTP);
  adopt        the same functions deployed, the server killed with SIGKILL (gateway and workers),
               restarted on the same state dir: images adopted from shared memory;
  disk         the same state dir after a clean stop (shared memory released) with the image
               files dropped from the page cache: every image read from disk.
and the goals of the cold-start issue:
  adopt - empty <= 2 s (+1 s per 10 GB adopted);
  disk - empty  <= 1.5 x (image bytes / sequential read bandwidth of those files) + 1 s,
where the bandwidth is measured here, on the same files, page cache dropped.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import tempfile
import time
from pathlib import Path

from loadtest.server import Server
from shared.bench_imagefile import drop_cache

DEFAULT = "bert-base,resnet152,resnet50,resnet18,mlp"


def _ready_after(state: Path) -> tuple[float, Server]:
    srv = Server(state, memory="512MiB")
    t0 = time.perf_counter()
    srv.start(timeout=600)
    return time.perf_counter() - t0, srv


def _read_bandwidth(files: list[Path]) -> float:
    for f in files:
        drop_cache(f)
    total, t0 = 0, time.perf_counter()
    buf = bytearray(8 << 20)
    for f in files:
        with open(f, "rb", buffering=0) as fh:
            while n := fh.readinto(buf):
                total += n
    return total / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--functions", default=DEFAULT, help="zoo models, one function each")
    ap.add_argument("--copies", type=int, default=1, help="functions per model (seeds differ): scales the images")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    models = args.functions.split(",")
    rows: dict[str, list[float]] = {"empty": [], "adopt": [], "disk": []}
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp) / "state"
        srv = Server(state, memory="512MiB").start(timeout=600)
        for i, m in enumerate(models):
            for c in range(args.copies):
                r = srv.deploy(f"f{i}-{m}-{c}", {"model": {"zoo": m, "seed": c}, "slo_ms": 5000})
                r.raise_for_status()
        srv.stop()
        files = sorted((state / "images").glob("*.img"))
        nbytes = sum(f.stat().st_size for f in files)
        for _ in range(args.repeats):
            t, s = _ready_after(Path(tmp) / f"empty-{time.monotonic_ns()}")
            rows["empty"].append(t)
            s.stop()
            _, s = _ready_after(state)  # images in shared memory again, then a crash
            os.killpg(s.pid, signal.SIGKILL)
            s.stop()
            t, s = _ready_after(state)
            assert "0 read from disk" in s.log(), s.log()
            rows["adopt"].append(t)
            s.stop()  # clean: releases shared memory, so the next start reads every file
            for f in files:
                drop_cache(f)
            t, s = _ready_after(state)
            assert "0 adopted" in s.log(), s.log()
            rows["disk"].append(t)
            s.stop()
        bw = _read_bandwidth(files)
    med = {k: statistics.median(v) for k, v in rows.items()}
    gb = nbytes / 1e9
    copies = f" x {args.copies}" if args.copies > 1 else ""
    print(
        f"{len(models) * args.copies} functions ({', '.join(models)}{copies}): {nbytes / 2**20:.0f} MiB of images; "
        f"median of {args.repeats}; sequential read {bw / 1e9:.2f} GB/s (page cache dropped)"
    )
    print(f"  empty server ready        {med['empty']:6.2f} s")
    adopt_goal = 2.0 + gb / 10
    print(
        f"  after kill -9 (adopt)     {med['adopt']:6.2f} s   +{med['adopt'] - med['empty']:.2f} s over empty "
        f"(goal <= {adopt_goal:.2f} s)"
    )
    disk_goal = 1.5 * nbytes / bw + 1.0
    print(
        f"  from disk only            {med['disk']:6.2f} s   +{med['disk'] - med['empty']:.2f} s over empty "
        f"(goal <= 1.5 x {nbytes / bw:.2f} s + 1 = {disk_goal:.2f} s)"
    )


if __name__ == "__main__":
    main()
