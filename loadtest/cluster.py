"""A real Redis and real `torpor serve --cluster` nodes on free ports, for tests and benchmarks."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import redis

from loadtest.server import Server, free_port

TOKEN = "cluster-token-for-tests-0123456789"
REDIS_BINARY = shutil.which("redis-server") or "/usr/bin/redis-server"


class RedisServer:
    """redis-server without persistence: a restart starts empty, as a lost Redis would."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> RedisServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [REDIS_BINARY, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            cwd=self.workdir,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.client().ping():
                    return self
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server on port {self.port} did not start")

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=2.0, decode_responses=True)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


def node(state_dir: Path, redis_url: str, name: str, *args: str, token: str = TOKEN, memory: str = "256MiB") -> Server:
    """A cluster node: one small CPU device, one compute thread (outputs bitwise equal across nodes)."""
    state_dir.parent.mkdir(parents=True, exist_ok=True)
    return Server(
        state_dir,
        "--cluster",
        redis_url,
        "--node",
        name,
        "--cluster-token",
        token,
        *args,
        devices="cpu:1",
        memory=memory,
    )


def wait_for(check: object, timeout: float = 10.0, interval: float = 0.05) -> float:
    """Poll `check()` until true; the seconds it took. Raises AssertionError on timeout."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if check():  # type: ignore[operator]
            return time.monotonic() - started
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s")
