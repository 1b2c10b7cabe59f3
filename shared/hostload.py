"""How busy the host's cores are with processes other than a given server (Linux /proc).

A 2-core host is never the server's alone: system services, the load generator and the
tools driving a test take a share of its cores. The simulator's model of CPU devices
shares the host's cores among executions, copies and the gateway's parsing; what other
processes take is `background_cores` of its profile, measured here.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

_TICK = os.sysconf("SC_CLK_TCK")


def _host_ticks() -> tuple[int, int]:
    """(busy, all) clock ticks of the host's cores since boot (/proc/stat's first line)."""
    with open("/proc/stat") as fh:
        fields = [int(v) for v in fh.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    # guest time is already counted in user (and guest_nice in nice): leave them out of the total.
    total = sum(fields[:8])
    return total - idle, total


def process_cpu_s(pid: int) -> float:
    """CPU seconds used by process `pid` and all its descendants, living or reaped (0 if gone)."""
    children: dict[int, list[int]] = {}
    own: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                # The command name may hold spaces and parentheses: fields follow the last ')'.
                rest = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited meanwhile
        p = int(entry)
        children.setdefault(int(rest[1]), []).append(p)
        # utime + stime, and cutime + cstime: children that exited and were waited for.
        own[p] = sum(int(v) for v in rest[11:15]) / _TICK
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        total += own.get(p, 0.0)
        todo += children.get(p, [])
    return total


@dataclass
class BusyMeter:
    """The host's cores kept busy by processes other than `pid`'s tree, from `start()` to `stop()`."""

    pid: int | None = None  # None: every process counts as other (measure while the caller sleeps)
    _t0: float = 0.0
    _busy0: int = 0
    _all0: int = 0
    _own0: float = 0.0

    def start(self) -> BusyMeter:
        self._t0 = time.monotonic()
        self._busy0, self._all0 = _host_ticks()
        self._own0 = process_cpu_s(self.pid) if self.pid is not None else 0.0
        return self

    def stop(self) -> float:
        """Mean cores busy with other processes over the interval (0 if it was too short to tell)."""
        busy, total = _host_ticks()
        own = process_cpu_s(self.pid) if self.pid is not None else 0.0
        elapsed = time.monotonic() - self._t0
        if total <= self._all0 or elapsed <= 0:
            return 0.0
        cores = (total - self._all0) / _TICK / elapsed  # the host's cores, as /proc/stat counts them
        busy_cores = (busy - self._busy0) / (total - self._all0) * cores
        return max(0.0, busy_cores - (own - self._own0) / elapsed)


def capped(busy: float, cores: float) -> float:
    """`busy` background cores as a profile may hold them: at most half the host's `cores`, so
    that a sample taken while something heavy ran leaves the devices some."""
    return round(min(busy, 0.5 * cores), 3)


def background_cores(seconds: float = 5.0) -> float:
    """Cores busy with other processes while this one sleeps for `seconds`: the host's own load."""
    meter = BusyMeter().start()
    time.sleep(seconds)
    return meter.stop()
