"""Run a headless locust load test against a running torpor server and write a report.

    python -m loadtest.run --url http://127.0.0.1:8080 --duration 60 --users 4 \\
        [--trace AZURE.csv | --functions N (--rate R | --shape uniform --rpm 5:30)] \\
        [--targets mlp,resnet18] [--encoding binary] --out report/

Writes OUT/report.md and OUT/report.html (per-function p50/p98/p99, SLO attainment,
cold-start fraction, throughput and latency over time as PNGs), locust's own CSVs
(OUT/locust_*.csv) and the per-request log (OUT/requests.csv).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from loadtest import report
from loadtest.replay import SHAPES, ReplayConfig
from shared import traces
from shared.specs import ENCODINGS

LOCUSTFILE = Path(__file__).with_name("locustfile.py")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default=os.environ.get("TORPOR_URL", "http://127.0.0.1:8080"))
    ap.add_argument("--duration", type=int, default=60, help="seconds")
    ap.add_argument("--users", type=int, default=4, help="locust users sharing the trace's arrivals")
    ap.add_argument("--trace", help="Azure Functions 2019 layout CSV (else a generated trace)")
    ap.add_argument("--functions", type=int, help="generated trace: functions (default: those deployed)")
    ap.add_argument("--rate", type=float, default=0.5, help="generated trace: mean requests/s per function")
    ap.add_argument(
        "--shape",
        choices=SHAPES,
        default="lognormal",
        help="generated trace: lognormal (heavy-tailed rates, bursts; default) or uniform (Torpor's workload: "
        "each function's requests per minute uniform in --rpm, spread evenly)",
    )
    ap.add_argument("--rpm", default="5:30", help="uniform: LOW:HIGH requests per minute per function")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--targets", help="comma list of deployed functions to invoke (default all)")
    ap.add_argument(
        "--encoding",
        choices=ENCODINGS,
        default="json",
        help="request bodies: JSON tensors, or Triton's binary tensor extension (as tritonclient sends them)",
    )
    ap.add_argument("--out", default="loadtest-report")
    args = ap.parse_args(argv)
    try:
        traces.parse_rpm(args.rpm)
    except ValueError as exc:
        ap.error(f"--rpm: {exc}")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        listing = httpx.get(f"{args.url.rstrip('/')}/v1/functions", timeout=30).json()["functions"]
    except (httpx.HTTPError, ValueError, KeyError) as exc:
        raise SystemExit(f"loadtest: cannot list functions at {args.url}: {exc}") from None
    slos = {f["name"]: float(f["slo_ms"]) for f in listing}
    env = {
        **os.environ,
        "TORPOR_REQUEST_LOG": str(out / "requests.csv"),
        "TORPOR_RATE": str(args.rate),
        "TORPOR_SHAPE": args.shape,
        "TORPOR_RPM": args.rpm,
        "TORPOR_SEED": str(args.seed),
        "TORPOR_MINUTES": str(max(1, -(-args.duration // 60))),
        "TORPOR_ENCODING": args.encoding,
    }
    if args.trace:
        env["TORPOR_TRACE"] = args.trace
    if args.functions:
        env["TORPOR_FUNCTIONS"] = str(args.functions)
    if args.targets:
        env["TORPOR_TARGETS"] = args.targets
    try:
        ReplayConfig.from_env(env)  # a bad option fails here, not inside locust
    except ValueError as exc:
        raise SystemExit(f"loadtest: {exc}") from None
    cmd = [
        *(sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless"),
        *("--host", args.url, "--users", str(args.users), "--spawn-rate", str(args.users)),
        *("--run-time", f"{args.duration}s", "--stop-timeout", "30"),
        *("--csv", str(out / "locust"), "--csv-full-history", "--only-summary", "--loglevel", "WARNING"),
    ]
    with open(out / "locust.log", "w") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        _wait(proc, args.duration)
    if not (out / "locust_stats.csv").exists():
        raise SystemExit(f"loadtest: locust exited with {proc.returncode}; see {out / 'locust.log'}")
    summary = report.build(out, "locust", slos, out / "requests.csv")
    print(f"{summary['requests']} requests, {summary['failures']} failed; report: {out / 'report.md'}")
    print((out / "report.md").read_text().split("\n\n")[2])  # the per-function table
    return 0


def _wait(proc: subprocess.Popen[bytes], duration: int) -> None:
    """Wait for locust, with a progress bar over the run time on a terminal."""
    if not sys.stderr.isatty():
        proc.wait()
        return
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(
        TextColumn("load test"), BarColumn(), TimeRemainingColumn(), console=Console(stderr=True), transient=True
    ) as bar:
        task = bar.add_task("run", total=duration)
        started = time.monotonic()
        while proc.poll() is None:
            bar.update(task, completed=min(duration, time.monotonic() - started))
            time.sleep(0.5)


if __name__ == "__main__":
    sys.exit(main())
