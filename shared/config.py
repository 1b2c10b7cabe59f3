"""Typed configuration read once at each process's entry point (env prefix TORPOR_)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from shared.errors import InvalidInput

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "kib": 1 << 10,
    "m": 10**6,
    "mb": 10**6,
    "mib": 1 << 20,
    "g": 10**9,
    "gb": 10**9,
    "gib": 1 << 30,
    "t": 10**12,
    "tb": 10**12,
    "tib": 1 << 40,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_admit_utilization(text: str) -> float | None:
    """Admission's bound: '0.85' -> 0.85, 'off' -> None (see gateway.admission)."""
    if text.strip().lower() == "off":
        return None
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= 10:
        raise InvalidInput(f"--admit-utilization: expected a share of device time such as 0.85, or off; got {text!r}")
    return value


def parse_size(text: str, what: str = "size") -> int:
    """'512MiB' -> 536870912; plain numbers are bytes."""
    m = _SIZE.match(text)
    unit = m.group(2).lower() if m else ""
    if not m or unit not in _UNITS:
        raise InvalidInput(f"{what}: expected a size like 512MiB or 2GiB, got {text!r}")
    return int(float(m.group(1)) * _UNITS[unit])


def format_size(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


@dataclass(frozen=True)
class DeviceSpec:
    kind: str  # "cpu" or "cuda"
    index: int  # position among the server's devices of this kind (CUDA: the GPU ordinal)

    @property
    def label(self) -> str:
        return f"{self.kind}:{self.index}"


def parse_devices(text: str) -> tuple[DeviceSpec, ...]:
    """'cpu:2' -> two CPU devices; 'cuda' -> every GPU; 'cuda:0,1' -> GPUs 0 and 1."""
    kind, _, rest = text.strip().partition(":")
    if kind == "cpu":
        count = int(rest) if rest.isdigit() else (1 if not rest else -1)
        if count < 1 or count > 64:
            raise InvalidInput(f"--devices: expected cpu:N with 1 <= N <= 64, got {text!r}")
        return tuple(DeviceSpec("cpu", i) for i in range(count))
    if kind == "cuda":
        from gpuworker.backends import cuda_device_count

        available = cuda_device_count()
        if available == 0:
            raise InvalidInput("--devices: no CUDA device is visible on this machine (use --devices cpu:N)")
        if not rest:
            return tuple(DeviceSpec("cuda", i) for i in range(available))
        try:
            indices = [int(x) for x in rest.split(",")]
        except ValueError as exc:
            raise InvalidInput(f"--devices: expected cuda:0,1,..., got {text!r}") from exc
        bad = [i for i in indices if not 0 <= i < available]
        if bad or len(set(indices)) != len(indices):
            raise InvalidInput(f"--devices: GPU indices {indices} invalid; this machine has {available}")
        return tuple(DeviceSpec("cuda", i) for i in indices)
    raise InvalidInput(f"--devices: expected cpu:N, cuda or cuda:I,J, got {text!r}")


def default_compute_threads(n_devices: int, cores: int | None = None) -> int:
    """Compute threads per CPU device, leaving each device's copy thread a core where possible.

    On a CPU the copy and the compute share cores; measured on 2 cores, overlapping
    a swap with 2 compute threads was slower than copying first, while 1 compute
    thread plus the copy on the other core cost only ~0.13x the copy time.
    """
    # The CPUs this process may run on (a container's cpuset), not all the host has.
    cores = cores or len(os.sched_getaffinity(0)) or 1
    per_device = max(1, cores // max(1, n_devices))
    return max(1, per_device - 1) if per_device >= 2 else 1


@dataclass(frozen=True)
class ServeConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    devices: tuple[DeviceSpec, ...] = field(default_factory=lambda: (DeviceSpec("cpu", 0), DeviceSpec("cpu", 1)))
    device_memory: int | None = None  # per device; None = backend default
    host_memory: int | None = None  # bound on host images; the rest stay on disk; None = unbounded
    state_dir: Path = Path(".torpor")
    demo: bool = False
    compute_threads: int | None = None  # per CPU device; None = default_compute_threads
    max_body_bytes: int = 64 << 20
    swap_group_bytes: int = 2 << 20
    log_level: str = "info"
    admin_token: str | None = None  # bearer token for deploy/delete; None = open (loopback only)
    max_queue: int = 256  # waiting requests per function before 429
    max_queued: int = 4096  # waiting requests in all before 429
    heartbeat_s: float = 2.0  # how often each worker is asked for STATS
    hang_timeout_s: float = 10.0  # no STATS answer for this long: the worker is hung
    exec_timeout_s: float = 600.0  # one frame executing this long: the worker is hung
    admit_utilization: float | None = 0.85  # admission's bound (gateway.admission); None = off
    split: bool = False  # pipeline-parallel cold starts across devices (Policy.split)

    @property
    def threads_per_device(self) -> int:
        return self.compute_threads or default_compute_threads(len(self.devices))


def env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(f"TORPOR_{name}", default)
