"""wrk as the load generator: one POST body, N connections, requests/s, p50, and CPU per request.

wrk (Debian package `wrk`) is written in C and costs little CPU per request, which
matters on a 2-core machine where the generator competes with the server it loads.
A small Lua script posts the body and prints the summary as one JSON line.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = io.open(os.getenv("TORPOR_BENCH_BODY"), "rb"):read("*a")
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, "non2xx": %d, "socket_errors": %d}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.status, e.connect + e.read + e.write + e.timeout))
end
"""
CLK_TCK = os.sysconf("SC_CLK_TCK")


def wrk_path() -> str:
    path = shutil.which("wrk")
    if path is None:
        raise SystemExit(
            "wrk is not installed: this benchmark uses it as its load generator.\n"
            "Install it with `apt-get install -y wrk` (Debian/Ubuntu), or run `make bench`, which checks for it."
        )
    return path


@dataclass(frozen=True)
class Run:
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    cpu_s: dict[str, float]  # CPU seconds each watched process used during the run

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    def cpu_us_per_request(self, name: str) -> float:
        return self.cpu_s[name] / max(self.requests, 1) * 1e6


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process so far (/proc/<pid>/stat fields 14 and 15)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # the command name may hold spaces
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


class Wrk:
    def __init__(self, body: bytes, cpu: str | None = None) -> None:
        self.wrk = wrk_path()
        self._dir = tempfile.TemporaryDirectory(prefix="torpor-wrk-")
        self.script = Path(self._dir.name) / "post.lua"
        self.script.write_text(LUA)
        self.body = Path(self._dir.name) / "body.json"
        self.body.write_bytes(body)
        self.cpu = cpu  # pin wrk to this CPU (taskset list), so it does not wander onto the server's core

    def run(self, url: str, connections: int, seconds: float, watch: dict[str, int]) -> Run:
        cmd = [self.wrk, "-t1", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "10s", "-s", str(self.script), url]
        if self.cpu is not None and shutil.which("taskset"):
            cmd = ["taskset", "-c", self.cpu, *cmd]
        before = {name: cpu_seconds(pid) for name, pid in watch.items()}
        proc = subprocess.run(
            cmd, capture_output=True, text=True, env={**os.environ, "TORPOR_BENCH_BODY": str(self.body)}, check=False
        )
        after = {name: cpu_seconds(pid) for name, pid in watch.items()}
        line = next((x for x in proc.stdout.splitlines() if x.startswith('{"requests"')), None)
        if proc.returncode != 0 or line is None:
            raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}")
        out = json.loads(line)
        if out["non2xx"] or out["socket_errors"]:
            raise RuntimeError(f"{url}: {out['non2xx']} non-2xx answers and {out['socket_errors']} socket errors")
        return Run(
            out["requests"],
            out["duration_us"] / 1e6,
            out["p50_us"] / 1e3,
            out["p99_us"] / 1e3,
            {name: after[name] - before[name] for name in watch},
        )

    def close(self) -> None:
        self._dir.cleanup()
