"""The one picklable object a worker process is started with (torch-free)."""

from __future__ import annotations

from dataclasses import dataclass

ARENA_RESERVE = 2 << 30  # room for activations and the framework's own allocations on a GPU
MIN_ARENA = 1 << 30


@dataclass(frozen=True)
class WorkerConfig:
    device: int  # index among the server's devices
    kind: str  # "cpu" or "cuda"
    ordinal: int  # CUDA ordinal (cuda) / position (cpu)
    budget: int | None  # arena bytes; None: a GPU's free memory less ARENA_RESERVE (measured by the worker)
    socket_path: str
    arena_segment: str | None  # CPU: shared-memory segment holding the arena
    peer_segments: tuple[tuple[int, str], ...]  # CPU: (device, segment) of every other arena
    compute_threads: int
    group_bytes: int
    log_level: str = "info"
