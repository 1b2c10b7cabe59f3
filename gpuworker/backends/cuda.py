"""A CUDA device: an arena allocated once on the GPU, page-locked host images, a transfer stream.

Only standard PyTorch APIs (streams, events, cudaHostRegister through
torch.cuda.cudart(), CUDA IPC through storage sharing) and pynvml. Everything
above this file -- grouping, arena bookkeeping, the gate -- is shared with the CPU
backend.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from gpuworker.config import ARENA_RESERVE, MIN_ARENA, WorkerConfig
from shared import shm

log = logging.getLogger("torpor.worker")

# cudaHostRegisterReadOnly: the device only reads the image; needed for read-only mappings.
_HOST_REGISTER_READ_ONLY = 0x08


class CudaBackend:
    name = "cuda"

    def __init__(self, cfg: WorkerConfig) -> None:
        if not torch.cuda.is_available() or cfg.ordinal >= torch.cuda.device_count():
            raise RuntimeError(f"no CUDA device {cfg.ordinal} is visible to this worker")
        self.device = torch.device("cuda", cfg.ordinal)
        torch.cuda.set_device(self.device)
        # One allocation for the whole budget: a model is a contiguous slice of it, so
        # a swap is one stream of large DMAs and never calls the allocator per tensor.
        budget = cfg.budget
        if budget is None:  # sized here: the worker is the one that knows its device
            free, _ = torch.cuda.mem_get_info(self.device)
            budget = max(MIN_ARENA, free - ARENA_RESERVE)
        self.arena = torch.empty(budget, dtype=torch.uint8, device=self.device)
        # Lower number = higher priority: swaps must not queue behind compute kernels.
        low, high = torch.cuda.Stream.priority_range()
        self.copy_stream = torch.cuda.Stream(self.device, priority=high)
        self._hosts: dict[str, tuple[shm.Segment, torch.Tensor, bool]] = {}
        self._peers: dict[int, torch.Tensor] = {}
        self._cfg = cfg

    # -- host images ------------------------------------------------------------------
    def host_buffer(self, segment: str) -> torch.Tensor:
        entry = self._hosts.get(segment)
        if entry is None:
            seg = shm.attach(segment, writable=False)
            buf = torch.frombuffer(seg.buf, dtype=torch.uint8)
            # Page-lock the mapping so host->device copies are DMA at full PCIe speed.
            rc = torch.cuda.cudart().cudaHostRegister(buf.data_ptr(), buf.numel(), _HOST_REGISTER_READ_ONLY)
            pinned = int(rc) == 0
            if not pinned:
                log.warning("cudaHostRegister failed (%s) for %s; copies will be pageable and slower", rc, segment)
            entry = self._hosts[segment] = (seg, buf, pinned)
        return entry[1]

    def release_host_buffer(self, segment: str) -> None:
        entry = self._hosts.pop(segment, None)
        if entry is not None:
            seg, buf, pinned = entry
            torch.cuda.synchronize(self.device)
            if pinned:
                torch.cuda.cudart().cudaHostUnregister(buf.data_ptr())
            del buf
            seg.close()

    # -- peers (CUDA IPC) --------------------------------------------------------------
    def share_arena(self) -> list[Any]:
        """The arena's IPC handle, sent to the gateway in READY and handed to peers."""
        return list(self.arena.untyped_storage()._share_cuda_())

    def open_peers(self, handles: dict[int, list[Any]]) -> None:
        for device, handle in handles.items():
            args = tuple(bytes(a) if isinstance(a, (bytes, bytearray)) else a for a in handle)
            storage = torch.UntypedStorage._new_shared_cuda(*args)
            self._peers[device] = torch.tensor([], dtype=torch.uint8, device=storage.device).set_(storage)
            self.measure_peer_bandwidth(device)

    def peer_arena(self, device: int) -> torch.Tensor:
        if device not in self._peers:
            raise KeyError(f"no IPC handle known for peer device {device}")
        return self._peers[device]

    # -- copies --------------------------------------------------------------------------
    def copy(self, dst: torch.Tensor, src: torch.Tensor) -> torch.cuda.Event:
        with torch.cuda.stream(self.copy_stream):
            dst.copy_(src, non_blocking=True)
            event = torch.cuda.Event()
            event.record(self.copy_stream)
        return event

    def wait_copied(self, marker: torch.cuda.Event | None) -> None:
        # The host does not block: the compute stream waits, so the whole forward
        # is enqueued at once and the GPU runs each layer as its weights land.
        if marker is not None:
            torch.cuda.current_stream(self.device).wait_event(marker)

    def wait_host(self, marker: torch.cuda.Event | None) -> None:
        if marker is not None:
            marker.synchronize()

    # -- execution ----------------------------------------------------------------------
    def prepare_inputs(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        return [t.to(self.device, non_blocking=False) for t in tensors]

    def finish_outputs(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        out = [t.to("cpu") for t in tensors]
        torch.cuda.synchronize(self.device)
        return out

    def measure_bandwidth(self, nbytes: int = 256 << 20) -> dict[str, float]:
        """Host->device GB/s over page-locked memory: a few large copies, best taken."""
        nbytes = min(nbytes, self.arena.numel())
        host = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
        best = 0.0
        for _ in range(3):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            with torch.cuda.stream(self.copy_stream):
                start.record(self.copy_stream)
                self.arena[:nbytes].copy_(host, non_blocking=True)
                end.record(self.copy_stream)
            end.synchronize()
            best = max(best, nbytes / (start.elapsed_time(end) / 1e3) / 1e9)
        self.bandwidth = {"host": best}
        return self.bandwidth

    def measure_peer_bandwidth(self, device: int, nbytes: int = 256 << 20) -> float:
        src = self.peer_arena(device)
        nbytes = min(nbytes, src.numel(), self.arena.numel())
        best = 0.0
        for _ in range(3):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            with torch.cuda.stream(self.copy_stream):
                start.record(self.copy_stream)
                self.arena[:nbytes].copy_(src[:nbytes], non_blocking=True)
                end.record(self.copy_stream)
            end.synchronize()
            best = max(best, nbytes / (start.elapsed_time(end) / 1e3) / 1e9)
        self.bandwidth[f"peer:{device}"] = best
        return best

    def info(self) -> dict[str, object]:
        from gpuworker.backends.topology import gpu_report

        free, total = torch.cuda.mem_get_info(self.device)
        return {
            "backend": "cuda",
            "gpu": torch.cuda.get_device_name(self.device),
            "compute_threads": torch.get_num_threads(),
            "copy_threads": 1,
            "free_bytes": free,
            "total_bytes": total,
            "link_gbps": dict(getattr(self, "bandwidth", {})),
            "nvml": gpu_report(self._cfg.ordinal),
        }

    def close(self) -> None:
        for segment in list(self._hosts):
            self.release_host_buffer(segment)
