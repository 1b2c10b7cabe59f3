"""A real `torpor serve` process on a free port, for end-to-end tests and benchmarks."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(self, state_dir: Path, *args: str, devices: str = "cpu:2", memory: str = "512MiB") -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.state_dir = state_dir
        self.log_path = state_dir.parent / f"server-{self.port}.log"
        self.args = [
            "--port",
            str(self.port),
            "--devices",
            devices,
            "--device-memory",
            memory,
            "--state-dir",
            str(state_dir),
            "--compute-threads",
            "1",
            *args,
        ]
        self.proc: subprocess.Popen[bytes] | None = None
        self.client = httpx.Client(base_url=self.url, timeout=120)

    def start(self, timeout: float = 120.0) -> Server:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "serve", *self.args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"torpor serve exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if self.client.get("/v2/health/ready").status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"torpor serve not ready within {timeout} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self, sig: int = signal.SIGINT, timeout: float = 60.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.client.close()
        self._log.close()
        return self.proc.returncode

    # -- API helpers -------------------------------------------------------------
    def deploy(self, name: str, body: dict[str, Any]) -> httpx.Response:
        return self.client.put(f"/v1/functions/{name}", json=body)

    def invoke(self, name: str, inputs: list[dict[str, Any]]) -> httpx.Response:
        return self.client.post(f"/v1/functions/{name}/invoke", json={"inputs": inputs})


def shm_segments_of(pid: int) -> list[str]:
    return sorted(n for n in os.listdir("/dev/shm") if n.startswith(f"torpor-{pid}-"))
