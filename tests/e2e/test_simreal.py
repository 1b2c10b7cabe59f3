"""The sim-to-real script, short: a real server replays a trace and the simulator runs the same one.

The strict comparison (functions meeting SLO within 5% of those deployed, median p98
within 25%) needs a quiet machine and a ten-minute trace; it lives in the script
(`python -m loadtest.simreal`), not in a timed test. Here: the script runs end to end and
both sides saw the same trace, function by function.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e


def test_simreal_replays_and_simulates_the_same_trace(tmp_path: Path) -> None:
    out = tmp_path / "simreal"
    cmd = [sys.executable, "-m", "loadtest.simreal", "--functions", "4", "--models", "resnet18"]
    cmd += ["--device-memory", "64MiB", "--minutes", "0.25", "--rate", "0.4", "--out", str(out)]
    cmd += ["--profile-window", "0", "--sim-seeds", "2"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "functions meeting SLO: real" in done.stdout and "median p98 sim/real" in done.stdout
    result = json.loads((out / "comparison.json").read_text())
    rows = result["per_function"]
    assert [r["function"] for r in rows] == ["f000", "f001", "f002", "f003"]
    assert len(result["sim_meeting_slo_counts"]) == 2  # one per simulator seed, the median reported
    assert min(result["sim_meeting_slo_counts"]) <= result["sim_meeting_slo"] <= max(result["sim_meeting_slo_counts"])
    assert sum(r["sim_requests"] for r in rows) > 10
    for r in rows:  # the replay stops with locust's run time, so it may fire a little less
        assert abs(r["real_requests"] - r["sim_requests"]) <= max(3, 0.4 * r["sim_requests"]), r
    assert (out / "real" / "report.md").exists()
    assert "diagnostic, at the speed the server showed" in done.stdout
    assert set(result["at_server_speed"]["speed"]) == {"resnet18"}
    assert len(result["at_server_speed"]["drift"]) <= 1  # a 15 s replay: one minute, if it had lone runs
    # The models were timed again after the replay; the verdict uses the times halfway between.
    assert (out / "profile-after.json").exists() and "timed before the replay" in done.stdout
    before_ms, used_ms = result["profile_before_only"]["exec_ms"]["resnet18"]
    after_ms = json.loads((out / "profile-after.json").read_text())["models"]["resnet18"]["exec_ms"]
    assert used_ms == pytest.approx((before_ms + after_ms) / 2, rel=1e-3)
    # ... and the host's course between the two timings, minute by minute (one minute here).
    assert len(result["speed_trend"]) == 1 and "on the line from the timings" in done.stdout
    # What other processes took of the host during the replay, measured beside it, is what the
    # simulation leaves the devices (the profile only has its idle sample).
    busy = json.loads((out / "real" / "host.json").read_text())["background_cores"]
    profiled = json.loads((out / "profile.json").read_text())
    assert result["background_cores"]["replay"] == pytest.approx(min(busy, 0.5 * profiled["host_cores"]), abs=1e-3)
    assert result["background_cores"]["idle"] == profiled.get("background_cores", 0)
    assert "other processes kept" in done.stdout
    # Diagnostics: execution minute by minute on both sides, and the cold starts per model.
    assert result["by_minute"] and all(m["real_exec_ms"] > 0 < m["sim_exec_ms"] for m in result["by_minute"])
    # 64 MiB per device holds one resnet18 (45 MiB) of the four functions: both sides swap.
    real_cold, sim_cold = result["cold_starts"]["resnet18"]
    assert 1 <= real_cold <= sum(r["real_requests"] for r in rows) and sim_cold >= 1
    assert "cold starts, real / simulated: resnet18" in done.stdout
    # The server measured each function's heavy flag at deploy; the simulated scheduler is told the same.
    flags = json.loads((out / "real" / "deployed.json").read_text())["heavy"]
    assert sorted(flags) == ["f000", "f001", "f002", "f003"] and all(isinstance(v, bool) for v in flags.values())
    assert result["heavy"]["resnet18"]["heavy"] == sum(flags.values())
    assert result["heavy"]["resnet18"]["functions"] == 4
    assert "as the server measured each function at deploy" in done.stdout
    # --again re-simulates that replay without measuring or replaying: the same real side.
    again = subprocess.run([*cmd, "--again"], capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stdout + again.stderr
    rerun = json.loads((out / "comparison.json").read_text())
    assert [r["real_p98_ms"] for r in rerun["per_function"]] == [r["real_p98_ms"] for r in rows]
    assert rerun["sim_meeting_slo_counts"] == result["sim_meeting_slo_counts"], "the same simulations"


def test_simpair_times_two_overlapping_requests_on_a_server_and_in_the_simulator() -> None:
    cmd = [sys.executable, "-m", "loadtest.simpair", "--profile", "cpu2-measured", "--models", "resnet18", "resnet18"]
    done = subprocess.run(
        cmd + ["--offsets", "0", "30", "--repeats", "2", "--sim-seeds", "2"],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    rows = [line.split() for line in done.stdout.splitlines() if " resnet18 " in line]
    cases = [" ".join(r[: r.index("resnet18")]) for r in rows]
    assert cases == ["alone", "alone", "offset 0 ms", "offset 0 ms", "offset 30 ms", "offset 30 ms"], done.stdout
    for r in rows:  # both sides timed each request: a real latency above its execution, a simulated one
        real, exec_ms = float(r[r.index("real") + 1]), float(r[r.index("exec") + 1])
        assert real > exec_ms > 0 and float(r[r.index("simulated") + 1]) > 0
        if r[0] == "offset":  # and each set over its own request alone
            assert float(r[r.index("alone:") + 2]) > 0 < float(r[-1])
    assert "a request beside another over alone, real / simulated" in done.stdout


def test_simpair_refuses_a_model_the_profile_lacks_before_starting_a_server() -> None:
    cmd = [sys.executable, "-m", "loadtest.simpair", "--profile", "cpu2-measured", "--models", "resnet18", "mlp"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "--models: ['mlp'] not in the profile" in done.stderr


def test_simreal_refuses_a_profile_timed_with_other_request_bodies_before_starting_a_server() -> None:
    # The built-in CPU profile timed JSON requests; a binary replay would pay a tenth of that.
    cmd = [sys.executable, "-m", "loadtest.simreal", "--profile", "cpu2-measured", "--models", "resnet18"]
    done = subprocess.run([*cmd, "--encoding", "binary"], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "--encoding binary: the profile timed json requests" in done.stderr
