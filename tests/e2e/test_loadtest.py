"""The documented load test: headless locust replaying a trace against a real server, then the report."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

from loadtest.server import Server

pytestmark = pytest.mark.e2e


def load_test(server: Server, out: Path, *options: str, seconds: int = 12) -> subprocess.CompletedProcess[str]:
    """`python -m loadtest.run` against the server for `seconds`, its report in `out`."""
    cmd = [sys.executable, "-m", "loadtest.run", "--url", server.url, "--duration", str(seconds), "--users", "2"]
    return subprocess.run([*cmd, *options, "--out", str(out)], capture_output=True, text=True, timeout=120)


def test_load_test_replays_a_trace_and_reports(server: Server, tmp_path: Path) -> None:
    out = tmp_path / "report"
    # Binary tensors, as tritonclient sends them (the default JSON bodies: tests/e2e/test_simreal.py).
    done = load_test(server, out, "--functions", "4", "--rate", "1", "--targets", "mlp,r18", "--encoding", "binary")
    assert done.returncode == 0, done.stdout + done.stderr
    for name in ("report.md", "report.html", "throughput.png", "latency.png", "locust_stats.csv"):
        assert (out / name).stat().st_size > 0, name
    with open(out / "locust_stats.csv", newline="") as fh:
        stats = {r["Name"]: r for r in csv.DictReader(fh)}
    total = int(stats["Aggregated"]["Request Count"])
    assert total > 10 and set(stats) == {"mlp", "r18", "Aggregated"}, "requests are named by function"
    report = (out / "report.md").read_text()
    assert f"{total} requests" in report
    with open(out / "requests.csv", newline="") as fh:
        logged = list(csv.DictReader(fh))
    assert logged and {r["function"] for r in logged} <= {"mlp", "r18"}
    assert {r["status"] for r in logged} == {"200"}, "every binary request understood"
    for r in logged:  # the server's own breakdown of every answered request
        if r["status"] == "200":
            assert float(r["exec_ms"]) > 0 and float(r["queue_ms"]) >= 0 and float(r["swap_ms"]) >= 0, r
            assert float(r["parse_ms"]) > 0 and float(r["gateway_ms"]) >= float(r["exec_ms"]) + float(r["parse_ms"]), r
    for line in report.splitlines():
        if line.startswith(("| mlp ", "| r18 ")):
            cells = [c.strip() for c in line.strip("|").split("|")]
            in_slo = float(cells[7].rstrip("%")) / 100
            cold = float(cells[8].rstrip("%")) / 100
            assert 0 <= in_slo <= 1 and 0 <= cold <= 1


def test_torpors_workload_shape_fires_each_functions_requests_evenly(server: Server, tmp_path: Path) -> None:
    out = tmp_path / "uniform"
    done = load_test(server, out, "--functions", "2", "--shape", "uniform", "--rpm", "20:20", "--targets", "mlp")
    assert done.returncode == 0, done.stdout + done.stderr
    with open(out / "requests.csv", newline="") as fh:
        logged = list(csv.DictReader(fh))
    starts: dict[str, list[float]] = {}
    for r in logged:
        assert r["status"] == "200", r
        starts.setdefault(r["trace_function"], []).append(float(r["start"]))
    assert sorted(starts) == ["f0000", "f0001"]
    for times in starts.values():  # 20 a minute, evenly: one every 3 s, no bursts
        gaps = [b - a for a, b in zip(sorted(times), sorted(times)[1:], strict=False)]
        assert len(times) >= 3 and all(abs(g - 3.0) < 0.5 for g in gaps), gaps


def test_a_bad_rate_range_is_named_before_locust_starts(server: Server, tmp_path: Path) -> None:
    done = load_test(server, tmp_path, "--shape", "uniform", "--rpm", "30:5", seconds=5)
    assert done.returncode != 0
    assert "--rpm: expected 0 <= LOW <= HIGH requests per minute, got '30:5'" in done.stderr
    assert not (tmp_path / "locust.log").exists(), "nothing started"
