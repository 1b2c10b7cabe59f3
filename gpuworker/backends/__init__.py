"""Device backends behind one interface; only cuda.py touches CUDA-specific APIs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import torch

    from gpuworker.config import WorkerConfig


class Backend(Protocol):
    """What the swap engine and executor need from a device."""

    name: str
    arena: torch.Tensor  # uint8, the whole budget, on the device

    def host_buffer(self, segment: str) -> torch.Tensor:
        """Map a host image segment as a uint8 tensor the device can copy from."""
        ...

    def release_host_buffer(self, segment: str) -> None: ...

    def peer_arena(self, device: int) -> torch.Tensor:
        """Another device's arena, readable from this one (peer exchange)."""
        ...

    def copy(self, dst: torch.Tensor, src: torch.Tensor) -> Any:
        """Copy one group (from the copy thread); returns a completion marker.

        CPU: copies and returns None. CUDA: enqueues the copy on the transfer stream
        and returns an event recorded after it.
        """
        ...

    def wait_copied(self, marker: Any) -> None:
        """Make execution wait for a group (CUDA: the compute stream waits on the event)."""
        ...

    def wait_host(self, marker: Any) -> None:
        """Block the calling thread until the marked copy has landed."""
        ...

    def measure_bandwidth(self) -> dict[str, float]:
        """Measured once at worker start (a few large copies); reported in READY."""
        ...

    def share_arena(self) -> Any:
        """What a peer needs to read this arena (CUDA: an IPC handle; CPU: nothing)."""
        ...

    def open_peers(self, handles: dict[int, Any]) -> None: ...

    def prepare_inputs(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]: ...

    def finish_outputs(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]: ...

    def info(self) -> dict[str, object]: ...

    def close(self) -> None: ...


def make_backend(cfg: WorkerConfig) -> Backend:
    if cfg.kind == "cpu":
        from gpuworker.backends.cpu import CpuBackend

        return CpuBackend(cfg)
    if cfg.kind == "cuda":
        from gpuworker.backends.cuda import CudaBackend

        return CudaBackend(cfg)
    raise ValueError(f"unknown device kind {cfg.kind!r}")


def cuda_device_count() -> int:
    """GPUs visible here, asked of NVML so the gateway need not import torch."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            return int(pynvml.nvmlDeviceGetCount())
        finally:
            pynvml.nvmlShutdown()
    except Exception:
        return 0
