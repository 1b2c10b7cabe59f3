"""Execution profiles of a model: warm run times by batch size, and how much a concurrent copy hurts.

The scheduler's cost model needs, per model and device kind, the warm execution
time at batch 1 and at the function's largest batch, and whether the model is
"heavy" (Torpor's term): its execution slows down noticeably while another copy
competes for the memory system -- on a GPU the PCIe switch it shares with a
neighbour, on a CPU device the memory bandwidth. Measured at deploy with a few
runs, and by `torpor profile` for the simulator.
"""

from __future__ import annotations

import math
import statistics
import threading
import time
from collections.abc import Sequence

import torch

from shared.exectiming import HEAVY_SLOWDOWN, ExecTiming
from shared.loadproc import LoadProcesses
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


def runs_in_turn(
    models: dict[str, tuple[torch.nn.Module, list[torch.Tensor]]],
    window_s: float,
    min_rounds: int = 7,
    threads: int | None = None,
) -> dict[str, list[float]]:
    """Batch-1 run times (ms) of each model, one run of each in turn, round after round, until
    `window_s` has passed (and at least `min_rounds` rounds), on `threads` compute threads
    (a worker's; None: the process's own setting).

    In turn, as a server runs one function after another's (each run finds the caches full of
    another model), and over a window rather than at one moment: a shared host's speed drifts
    by 10-20% within a minute, and a server's executions see that drift.
    """
    before = torch.get_num_threads()
    if threads:
        # Torch's default is one thread per core: timed so, a model's run is another than the
        # worker's, which computes on its --compute-threads.
        torch.set_num_threads(threads)
    try:
        times: dict[str, list[float]] = {name: [] for name in models}
        for model, inputs in models.values():  # warm
            run_times(model, inputs, runs=0)
        deadline = time.perf_counter() + window_s
        rounds = 0
        while rounds < min_rounds or time.perf_counter() < deadline:
            for name, (model, inputs) in models.items():
                times[name] += run_times(model, inputs, runs=1, warmup=0)
            rounds += 1
    finally:
        torch.set_num_threads(before)
    return times


def log_spread(times: dict[str, list[float]]) -> float:
    """The log-normal sigma of run times around each model's own median, pooled over the models."""
    logs = [math.log(t / mid) for ts in times.values() if ts for mid in [statistics.median(ts)] for t in ts]
    return math.sqrt(sum(v * v for v in logs) / len(logs)) if len(logs) > 1 else 0.0


class CopyLoad:
    """Copies a large buffer over and over on a thread, from `with` entry to exit (torch copies
    release the GIL). On a GPU it copies from page-locked host memory onto the device, as a
    swap-in does.
    """

    def __init__(self, nbytes: int = 64 << 20, device: torch.device | None = None) -> None:
        on_gpu = device is not None and device.type == "cuda"
        self._src = torch.empty(nbytes, dtype=torch.uint8, pin_memory=on_gpu)
        self._dst = torch.empty(nbytes, dtype=torch.uint8, device=device if on_gpu else None)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="profile-copy", daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._dst.copy_(self._src)

    def __enter__(self) -> CopyLoad:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def corun(
    model: torch.nn.Module, specs: Sequence[TensorSpec], load: LoadProcesses, threads: int = 1, runs: int = 8
) -> tuple[float, float]:
    """(slowdown, spread) of a batch-1 run of `model` beside `load` (shared.loadproc: another
    CPU device executing, or copying a model in).

    Runs alone (the load paused) and beside it alternate, so a host whose speed drifts within
    seconds slows both alike. The slowdown is the median of the paired ratios; the spread is
    the standard deviation of the log of the run times beside the load (the log-normal sigma
    the simulator draws execution times with): where the two runs fall against each other
    varies from run to run, as on a server.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    alone, loaded = [], []
    try:
        x1 = random_tensors(specs, 1)
        run_times(model, x1, runs=0)
        with load:
            for _ in range(runs):
                load.pause()
                alone += run_times(model, x1, runs=1, warmup=0)
                load.resume()
                loaded += run_times(model, x1, runs=1, warmup=0)
    finally:
        torch.set_num_threads(before)
    slowdown = max(1.0, statistics.median(b / a for a, b in zip(alone, loaded, strict=True)))
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
