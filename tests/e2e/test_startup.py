"""Start-up failures: one line naming the cause and the fix, exit code 2, no orphans, nothing in /dev/shm.

And `--demo` on a small device budget skips what does not fit, with a warning.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from loadtest.server import Server, free_port, shm_segments_of

pytestmark = pytest.mark.e2e


def _serve(state_dir: Path, *args: str, port: int | None = None) -> tuple[subprocess.Popen[str], str]:
    """Run `torpor serve` to its exit; its process group is its pid, so leftovers can be found."""
    cmd = [sys.executable, "-m", "gateway.cli", "serve", "--port", str(port or free_port()), "--devices", "cpu:2"]
    cmd += ["--state-dir", str(state_dir), "--compute-threads", "1", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    _, err = proc.communicate(timeout=120)
    return proc, err


def _leftovers(pgid: int, grace_s: float = 5.0) -> list[str]:
    """Processes still in the server's group once it exited (after a grace for them to notice)."""
    deadline = time.monotonic() + grace_s
    while _group_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.1)
    out = []
    for pid in _group_members(pgid):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            out.append(f"{pid}: {cmdline}")
        except OSError:
            continue
    return out


def _group_members(pgid: int) -> list[int]:
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.getpgid(int(entry)) == pgid:
                    members.append(int(entry))
            except ProcessLookupError:
                continue
    return members


def _assert_failed_cleanly(proc: subprocess.Popen[str], stderr: str, *expected: str) -> None:
    try:
        assert proc.returncode == 2, stderr
        errors = [line for line in stderr.splitlines() if line.startswith("torpor serve:")]
        assert len(errors) == 1, stderr
        assert errors[0] == stderr.rstrip().splitlines()[-1], "the error is the last word"
        for text in expected:
            assert text in errors[0], stderr
        for noise in ("Traceback", "Task was destroyed", "Exception"):
            assert noise not in stderr, stderr
        assert _leftovers(proc.pid) == [], "processes left behind"
        assert shm_segments_of(proc.pid) == [], "shared memory left behind"
    finally:
        for pid in _group_members(proc.pid):  # do not let a failure leak processes into the suite
            os.kill(pid, signal.SIGKILL)


def test_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc, err = _serve(tmp_path / "state", port=port)
    _assert_failed_cleanly(proc, err, f"cannot listen on 127.0.0.1:{port}", "Address already in use", "--port")


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (["--port", "70000"], "--port: expected 0 to 65535"),
        (["--host", "no-such-host.invalid"], "cannot resolve --host 'no-such-host.invalid'"),
        (["--devices", "cuda"], "--devices: no CUDA device is visible on this machine (use --devices cpu:N)"),
        (["--device-memory", "12XB"], "--device-memory: expected a size like 512MiB"),
    ],
)
def test_bad_options(tmp_path: Path, options: list[str], expected: str) -> None:
    if options == ["--devices", "cuda"] and Path("/dev/nvidia0").exists():
        pytest.skip("this machine has a GPU")
    proc, err = _serve(tmp_path / "state", *options)
    _assert_failed_cleanly(proc, err, expected)


def test_corrupt_registry_file(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "functions.json").write_text('{"functions": [{"name": ')
    proc, err = _serve(state)
    _assert_failed_cleanly(proc, err, "cannot read", "functions.json", "move it away")


def test_state_dir_that_cannot_be_written(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    proc, err = _serve(blocker / "state")
    _assert_failed_cleanly(proc, err, "cannot write the state directory", "--state-dir")


def test_workers_that_cannot_start(tmp_path: Path) -> None:
    # Arenas larger than this machine's shared memory.
    proc, err = _serve(tmp_path / "state", "--device-memory", "4096GiB")
    _assert_failed_cleanly(proc, err, "the device workers could not start", "--device-memory")


def test_demo_skips_what_does_not_fit(tmp_path: Path) -> None:
    srv = Server(tmp_path / "state", "--demo", devices="cpu:1", memory="60MiB").start()
    try:
        names = {f["name"] for f in srv.client.get("/v1/functions").json()["functions"]}
        assert names == {"mlp", "resnet18"}  # resnet50 (98 MiB) and bert (418 MiB) do not fit in 60 MiB
        log = srv.log()
        assert "skipping demo function resnet50" in log and "skipping demo function bert" in log
        assert "Traceback" not in log
    finally:
        pid = srv.pid
        assert srv.stop() == 0, srv.log()
        assert shm_segments_of(pid) == []


def test_stop_signal_during_start_up_releases_everything(tmp_path: Path) -> None:
    log = tmp_path / "serve.log"
    cmd = [sys.executable, "-m", "gateway.cli", "serve", "--port", str(free_port()), "--devices", "cpu:1"]
    cmd += ["--state-dir", str(tmp_path / "state"), "--compute-threads", "1", "--demo", "--device-memory", "128MiB"]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        # The worker is up and resnet18 is being built in a thread: its image may appear after `stop`.
        while "deploying demo function resnet18" not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, log.read_text()
        text = log.read_text()
        assert "Traceback" not in text and "Task was destroyed" not in text, text
        assert _leftovers(proc.pid) == [], "processes left behind"
        assert shm_segments_of(proc.pid) == [], "shared memory left behind"
    finally:
        for pid in _group_members(proc.pid):
            os.kill(pid, signal.SIGKILL)
