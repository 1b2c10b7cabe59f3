"""A CPU "device": an arena in shared memory and a fixed number of compute threads.

The arena lives in shared memory (created by the gateway) so that another CPU
device can read a resident model straight out of it for a peer copy.
"""

from __future__ import annotations

import torch

from gpuworker.config import WorkerConfig
from shared import shm


class CpuBackend:
    name = "cpu"

    def __init__(self, cfg: WorkerConfig) -> None:
        assert cfg.arena_segment is not None and cfg.budget is not None
        torch.set_num_threads(cfg.compute_threads)
        self._cfg = cfg
        self._arena_seg = shm.attach(cfg.arena_segment, writable=True)
        self.arena = torch.frombuffer(self._arena_seg.buf, dtype=torch.uint8)
        # Take the whole budget now, as a GPU arena would: touching every page here keeps
        # first-touch page faults (tmpfs allocation) out of the first swap-ins.
        self.arena.zero_()
        self._hosts: dict[str, shm.Segment] = {}
        self._peers: dict[int, tuple[shm.Segment, torch.Tensor]] = {}

    def host_buffer(self, segment: str) -> torch.Tensor:
        seg = self._hosts.get(segment)
        if seg is None:
            seg = self._hosts[segment] = shm.attach(segment, writable=False)
        return torch.frombuffer(seg.buf, dtype=torch.uint8)

    def release_host_buffer(self, segment: str) -> None:
        seg = self._hosts.pop(segment, None)
        if seg is not None:
            seg.close()

    def peer_arena(self, device: int) -> torch.Tensor:
        if device not in self._peers:
            name = dict(self._cfg.peer_segments).get(device)
            if name is None:
                raise KeyError(f"no arena known for peer device {device}")
            seg = shm.attach(name, writable=False)
            self._peers[device] = (seg, torch.frombuffer(seg.buf, dtype=torch.uint8))
        return self._peers[device][1]

    def copy(self, dst: torch.Tensor, src: torch.Tensor) -> None:
        dst.copy_(src)  # releases the GIL; runs on the copy thread's own core where there is one

    def wait_copied(self, marker: None) -> None:
        return None

    def wait_host(self, marker: None) -> None:
        return None

    def measure_bandwidth(self, nbytes: int = 64 << 20) -> dict[str, float]:
        """Copy GB/s into the arena; on a CPU, host and peer copies are both memcpy."""
        import time

        nbytes = min(nbytes, self.arena.numel())
        src = torch.ones(nbytes, dtype=torch.uint8)
        best = 0.0
        for _ in range(3):
            t0 = time.perf_counter()
            self.arena[:nbytes].copy_(src)
            best = max(best, nbytes / (time.perf_counter() - t0) / 1e9)
        self.bandwidth = {"host": best, "peer": best}
        return self.bandwidth

    def share_arena(self) -> None:
        return None  # peers map the arena's shared-memory segment by name

    def open_peers(self, handles: dict[int, object]) -> None:
        return None

    def prepare_inputs(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        return tensors

    def finish_outputs(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        return tensors

    def info(self) -> dict[str, object]:
        return {
            "backend": "cpu",
            "compute_threads": torch.get_num_threads(),
            "copy_threads": 1,
            "link_gbps": dict(getattr(self, "bandwidth", {})),
        }

    def close(self) -> None:
        for seg in self._hosts.values():
            seg.close()
        for seg, _ in self._peers.values():
            seg.close()
        self._arena_seg.close()
