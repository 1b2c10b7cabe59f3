"""`torpor profile` measures this machine into a profile the simulator loads."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from gateway.sim.profile import load
from shared import shm


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
    r = mlp.request_quantiles  # the requests alone around their median
    assert len(r) == 21 and list(r) == sorted(r) and r[0] <= 1.0 <= r[-1], r
    assert mlp.swap_latency_ms is not None and mlp.swap_latency_ms >= 0, "a cold request timed through a server"
    assert "a cold request" in done.stdout
    q = mlp.exec_quantiles  # the runs in turn around their median: fastest, every 5%, slowest
    assert len(q) == 21 and list(q) == sorted(q) and q[0] <= 1.0 <= q[-1], q
    assert profile.host_cores is not None and profile.host_cores >= 1 and profile.device_threads == 1
    assert 0 <= profile.background_cores < profile.host_cores
    assert "cores busy with other processes" in done.stdout
    assert "in turn" in done.stdout, "execution timed with the models in turn over the window"


def _owners() -> set[int | None]:
    return {shm.owner(name) for name in shm.listing()}


def test_a_killed_profile_leaves_no_segment_and_no_server(tmp_path: Path) -> None:
    # SIGTERM is how a supervisor or `kill` stops a tool: its shared memory and the server it
    # started to time requests must go with it, as they do on Ctrl-C.
    before = _owners()
    cmd = [sys.executable, "-m", "gateway.cli", "profile", "--devices", "cpu:2", "--device-memory", "256MiB"]
    cmd += ["--models", "mlp", "--window", "1", "--out", str(tmp_path / "p.json")]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # its progress lines as they are printed
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        out = ""
        while "timing a request" not in out:  # the profile's segments exist; its server is starting
            line = proc.stdout.readline() if proc.stdout else ""
            assert line, f"the profile ended early:\n{out}"
            out += line
        deadline = time.monotonic() + 60
        while not (servers := _owners() - before - {proc.pid, None}) and time.monotonic() < deadline:
            time.sleep(0.05)  # the server's arenas appear once it runs
        assert servers, "the request-timing server started"
        assert shm.owned_by(proc.pid), "the profile's own segments exist while it runs"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout:
            proc.stdout.close()
    assert shm.owned_by(proc.pid) == []
    deadline = time.monotonic() + 10
    while any(shm.alive(pid) for pid in servers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(shm.alive(pid) for pid in servers), "the request-timing server stopped with the profile"
    assert not any(shm.owned_by(pid) for pid in servers), "and unlinked its segments"
