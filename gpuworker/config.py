"""The one picklable object a worker process is started with (torch-free)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class WorkerConfig:
    device: int  # index among the server's devices
    kind: str  # "cpu" or "cuda"
    ordinal: int  # CUDA ordinal (cuda) / position (cpu)
    budget: int  # arena bytes
    socket_path: str
    arena_segment: str | None  # CPU: shared-memory segment holding the arena
    peer_segments: tuple[tuple[int, str], ...]  # CPU: (device, segment) of every other arena
    compute_threads: int
    group_bytes: int
    log_level: str = "info"
