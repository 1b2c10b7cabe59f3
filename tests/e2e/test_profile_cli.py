"""`torpor profile` measures this machine into a profile the simulator loads."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from gateway.sim.profile import load


def test_profile_writes_a_profile_the_simulator_loads(tmp_path: Path) -> None:
    out = tmp_path / "cpu.json"
    cmd = [sys.executable, "-m", "gateway.cli", "profile", "--devices", "cpu:2", "--device-memory", "256MiB"]
    cmd += ["--models", "mlp", "--max-batch", "2", "--window", "1", "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    profile = load(out)
    assert profile.devices == 2
    mlp = profile.models["mlp"]
    assert mlp.nbytes > 0 and mlp.exec_ms > 0 and mlp.max_batch == 2
    assert mlp.pipeline_overlap is not None and 0 <= mlp.pipeline_overlap <= 1, "the copy hidden by a pipelined run"
    assert mlp.request_ms > 0, "a request timed through uvicorn"
    q = mlp.exec_quantiles  # the runs in turn around their median: fastest, every 5%, slowest
    assert len(q) == 21 and list(q) == sorted(q) and q[0] <= 1.0 <= q[-1], q
    assert profile.host_cores is not None and profile.host_cores >= 1 and profile.device_threads == 1
    assert 0 <= profile.background_cores < profile.host_cores
    assert "cores busy with other processes" in done.stdout
    assert "in turn" in done.stdout, "execution timed with the models in turn over the window"
