"""Execution profiles of a model: warm run times by batch size, and how much a concurrent copy hurts.

The scheduler's cost model needs, per model and device kind, the warm execution
time at batch 1 and at the function's largest batch, and whether the model is
"heavy" (Torpor's term): its execution slows down noticeably while another copy
competes for the memory system -- on a GPU the PCIe switch it shares with a
neighbour, on a CPU device the memory bandwidth. Measured at deploy with a few
runs, and by `torpor profile` for the simulator.
"""

from __future__ import annotations

import abc
import math
import statistics
import threading
import time
from collections.abc import Sequence

import torch

from shared.exectiming import HEAVY_SLOWDOWN, ExecTiming
from shared.program import KSERVE_TO_TORCH
from shared.specs import FREE_DIM, TensorSpec

__all__ = ["HEAVY_SLOWDOWN", "ExecTiming", "profile", "random_tensors", "time_runs"]


def random_tensors(specs: Sequence[TensorSpec], batch: int, seed: int = 0) -> list[torch.Tensor]:
    """Inputs of the declared shapes: a free first dim is the batch, other free dims FREE_DIM.

    Integers are zeros, valid as indices into any embedding.
    """
    g = torch.Generator().manual_seed(seed)
    out = []
    for spec in specs:
        shape = tuple((batch if i == 0 else FREE_DIM) if d == -1 else d for i, d in enumerate(spec.shape))
        dtype = KSERVE_TO_TORCH[spec.datatype]
        if dtype.is_floating_point:
            out.append(torch.randn(shape, generator=g).to(dtype))
        else:
            out.append(torch.zeros(shape, dtype=dtype))
    return out


def time_runs(model: torch.nn.Module, inputs: list[torch.Tensor], runs: int = 3, warmup: int = 1) -> float:
    """Median warm run time in milliseconds (synchronised when the inputs are on a GPU)."""
    return statistics.median(run_times(model, inputs, runs, warmup))


def run_times(model: torch.nn.Module, inputs: list[torch.Tensor], runs: int = 3, warmup: int = 1) -> list[float]:
    """Each warm run's time in milliseconds (synchronised when the inputs are on a GPU)."""
    device = inputs[0].device if inputs else torch.device("cpu")
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    times = []
    with torch.inference_mode():
        for i in range(warmup + runs):
            sync()
            t0 = time.perf_counter()
            model(*inputs)
            sync()
            if i >= warmup:
                times.append((time.perf_counter() - t0) * 1e3)
    return times


class BackgroundLoad(abc.ABC):
    """A thread repeating one step (`_step`) from `with` entry to exit: load beside a timed run."""

    name = "profile-load"

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)

    @abc.abstractmethod
    def _step(self) -> None: ...

    def _loop(self) -> None:
        with torch.inference_mode():
            while not self._stop.is_set():
                self._step()

    def __enter__(self) -> BackgroundLoad:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class CopyLoad(BackgroundLoad):
    """Copies a large buffer over and over (torch copies release the GIL).

    On a GPU it copies from page-locked host memory onto the device, as a swap-in does.
    """

    name = "profile-copy"

    def __init__(self, nbytes: int = 64 << 20, device: torch.device | None = None) -> None:
        on_gpu = device is not None and device.type == "cuda"
        self._src = torch.empty(nbytes, dtype=torch.uint8, pin_memory=on_gpu)
        self._dst = torch.empty(nbytes, dtype=torch.uint8, device=device if on_gpu else None)
        super().__init__()

    def _step(self) -> None:
        self._dst.copy_(self._src)


class ComputeLoad(BackgroundLoad):
    """Runs a model over and over, as a second CPU device executing does.

    torch releases the GIL inside its operators, so with one compute thread per caller the two
    executions run on two cores at once and share what CPU devices share: the cores' caches,
    the memory bandwidth and (with other work on the machine) the cores themselves.
    """

    name = "profile-compute"

    def __init__(self, model: torch.nn.Module, inputs: list[torch.Tensor]) -> None:
        self._model, self._inputs = model, inputs
        super().__init__()

    def _step(self) -> None:
        self._model(*self._inputs)


def corun(model: torch.nn.Module, specs: Sequence[TensorSpec], threads: int = 1, runs: int = 8) -> tuple[float, float]:
    """(slowdown, spread) of a batch-1 run of `model` while another CPU device executes it too.

    The slowdown is the median run time beside the other execution over the median alone;
    the spread is the standard deviation of the log of the run times beside it (the
    log-normal sigma the simulator draws execution times with): where the two runs fall
    against each other varies from run to run, as on a server.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x1 = random_tensors(specs, 1)
        alone = time_runs(model, x1, runs)
        with ComputeLoad(model, random_tensors(specs, 1, seed=1)):
            loaded = run_times(model, x1, runs)
    finally:
        torch.set_num_threads(before)
    slowdown = max(1.0, statistics.median(loaded) / alone) if alone > 0 else 1.0
    return slowdown, statistics.stdev(math.log(t) for t in loaded) if len(loaded) > 1 else 0.0


def profile(
    model: torch.nn.Module,
    specs: Sequence[TensorSpec],
    max_batch: int = 1,
    threads: int | None = None,
    runs: int = 3,
    device: torch.device | None = None,
) -> ExecTiming:
    """Time `model` on the device kind that will serve it (CPU, or a GPU: `device`).

    On a GPU the model is moved there, so pass a model that is not needed elsewhere.
    """
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)  # as many as a worker computes with
    try:
        if device is not None:
            model = model.to(device)

        def inputs(batch: int) -> list[torch.Tensor]:
            return [t.to(device) if device is not None else t for t in random_tensors(specs, batch)]

        x1 = inputs(1)
        alone = time_runs(model, x1, runs)
        with CopyLoad(device=device):
            loaded = time_runs(model, x1, runs)
        batch_ms = time_runs(model, inputs(max_batch), runs) if max_batch > 1 else None
    finally:
        torch.set_num_threads(before)
    return ExecTiming(alone, batch_ms, max_batch, loaded / alone if alone > 0 else 1.0)
