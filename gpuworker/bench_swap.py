"""Pipelined swap-in measured on a real CPU device, side by side in one run.

    python -m gpuworker.bench_swap [--models resnet50 resnet152 bert-base] [--repeats 5]

For each model, with the worker's own code (backend, arena, swap engine, gate):
  warm        the model resident, one inference
  swap+exec   copy all weights, then run (no overlap)
  pipelined   start the copy and run at once; each layer waits for its group
  memcpy      one plain copy of the same bytes into the same arena memory
and the ratios: swap bandwidth / memcpy bandwidth (goal >= 0.9), pipelined /
max(memcpy, warm) (goal <= 1.15), pipelined / swap+exec, and the share of the copy the
pipelined run hides (1 - its time over the warm runs just before and after it, over the
copy's: what `torpor profile` records as the model's pipeline_overlap).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any

import torch

from gpuworker.backends.cpu import CpuBackend
from gpuworker.config import WorkerConfig
from gpuworker.executor import Executor
from gpuworker.heap import keep_free_heap
from shared import program, shm, zoo
from shared.modelstore import ModelImage, pack
from shared.protocol import Evict, Infer, Load, prepare_record, tensor_meta, tensor_to_wire

INPUTS = {
    "resnet50": ("FP32", (1, 3, 224, 224)),
    "resnet152": ("FP32", (1, 3, 224, 224)),
    "resnet18": ("FP32", (1, 3, 224, 224)),
    "bert-base": ("INT64", (1, 128)),
    "mlp": ("FP32", (1, 64)),
}


def _input(name: str, length: int | None = None) -> dict[str, Any]:
    """The model's bench input; `length`: a token sequence of this length instead (bert-base)."""
    dtype, shape = INPUTS[name]
    if length is not None:
        if dtype != "INT64":
            raise SystemExit(f"--tokens: {name} takes no token sequence")
        shape = (shape[0], length)
    g = torch.Generator().manual_seed(0)
    t = torch.randint(0, 30000, shape, generator=g) if dtype == "INT64" else torch.randn(shape, generator=g)
    return tensor_to_wire(zoo.entry(name).inputs[0].name, dtype, shape, bytearray(t.numpy().tobytes()))


class Bench:
    """The worker's own executor and swap engine on one device backend (CPU here, CUDA in gpucheck)."""

    def __init__(self, backend: Any, group_bytes: int, arena_name: str | None = None) -> None:
        keep_free_heap()  # as a worker's process does (gpuworker/heap.py)
        self.arena_name = arena_name
        self.backend = backend
        self.replies: dict[int, Any] = {}
        self.executor = Executor(self.backend, group_bytes, lambda rid, r: self.replies.__setitem__(rid, r))
        self.images: list[ModelImage] = []

    def prepare(self, name: str) -> tuple[str, int]:
        gm = program.build({"zoo": name}, meta=False)
        image = pack(program.packing_order(gm), shm.segment_name(f"bench-{name}"))
        self.images.append(image)
        self.executor.prepare(prepare_record(name, {"zoo": name}, image))
        return name, image.nbytes

    def load(self, name: str, offset: int) -> Any:
        self.executor.load(1, Load(model_id=name, offset=offset))
        return self.executor.resident[name].swap

    def infer(self, name: str, x: dict[str, Any]) -> float:
        t0 = time.perf_counter()
        self.executor.infer(Infer(model_id=name, inputs=[tensor_meta(x)]), [x["data"]])
        return (time.perf_counter() - t0) * 1e3

    def measure(self, name: str, repeats: int) -> dict[str, float]:
        _, nbytes = self.prepare(name)
        x = _input(name)
        warm, serial, piped, swaps, copies, unhidden = [], [], [], [], [], []
        # Alternate between two arena offsets so every swap also rebinds the program's views.
        offsets = [0, 1 << 16]
        for i in range(repeats):
            # swap, then execute
            t0 = time.perf_counter()
            swap = self.load(name, offsets[i % 2])
            swap.done.wait()
            self.infer(name, x)
            serial.append((time.perf_counter() - t0) * 1e3)
            swaps.append(swap.seconds * 1e3)  # the copy alone, as the worker reports it
            warm.append(self.infer(name, x))
            self.executor.evict(Evict(model_id=name))
            # pipelined: the inference starts while the copy runs
            t0 = time.perf_counter()
            swap = self.load(name, offsets[(i + 1) % 2])
            self.infer(name, x)
            piped.append((time.perf_counter() - t0) * 1e3)
            swap.done.wait()
            # What the copy added to this run, against the warm runs just before and after it:
            # paired, as the host's speed drifts between repeats and a run varies by more than a
            # small model's copy (the medians of serial and piped, differenced, swung from 0.1
            # to 1.0 of the copy between profiles on one machine).
            unhidden.append(piped[-1] - (warm[-1] + self.infer(name, x)) / 2)
            self.executor.evict(Evict(model_id=name))
            # plain memcpy of the same bytes into the same arena memory (synchronous on a GPU too)
            src = self.backend.host_buffer(self.images[-1].segment_name)[:nbytes]
            t0 = time.perf_counter()
            self.backend.arena[:nbytes].copy_(src)
            if self.backend.name == "cuda":
                torch.cuda.synchronize(self.backend.device)
            copies.append((time.perf_counter() - t0) * 1e3)
        med = statistics.median
        return {
            "bytes": nbytes,
            "warm": med(warm),
            "swap": med(swaps),
            "serial": med(serial),
            "piped": med(piped),
            "memcpy": med(copies),
            "unhidden": med(unhidden),
        }

    @classmethod
    def cpu(cls, budget: int, threads: int, group_bytes: int) -> Bench:
        arena_name = shm.segment_name("bench-arena")
        shm.create(arena_name, budget).close()
        cfg = WorkerConfig(0, "cpu", 0, budget, "", arena_name, (), threads, group_bytes)
        return cls(CpuBackend(cfg), group_bytes, arena_name)

    def close(self) -> None:
        self.executor.close()
        self.backend.close()
        if self.arena_name is not None:
            shm.unlink(self.arena_name)
        for im in self.images:
            im.unlink()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["resnet50", "resnet152", "bert-base"])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="compute threads (the copy thread is extra)")
    ap.add_argument("--group", type=int, default=2 << 20, help="swap group bytes")
    args = ap.parse_args()
    shm.exit_on_sigterm()  # a kill still unlinks the segments made below
    bench = Bench.cpu(512 << 20, args.threads, args.group)
    print(
        f"CPU device: {args.threads} compute thread(s) + 1 copy thread on {os.cpu_count()} cores; "
        f"groups of {args.group / 2**20:g} MiB; median of {args.repeats}"
    )
    head = f"{'model':<10}{'MiB':>7}{'warm':>8}{'swap+exec':>10}{'pipelined':>10}{'memcpy':>8}{'swap':>7}"
    print(head + f"{'swapBW/memcpyBW':>16}{'piped/max(copy,warm)':>22}{'piped/serial':>13}{'copy hidden':>12}")
    try:
        for name in args.models:
            r = bench.measure(name, args.repeats)
            print(
                f"{name:<10}{r['bytes'] / 2**20:>7.1f}{r['warm']:>8.1f}{r['serial']:>10.1f}{r['piped']:>10.1f}"
                f"{r['memcpy']:>8.1f}{r['swap']:>7.1f}{r['memcpy'] / r['swap']:>16.2f}"
                f"{r['piped'] / max(r['memcpy'], r['warm']):>22.2f}{r['piped'] / r['serial']:>13.2f}"
                f"{1 - r['unhidden'] / min(r['swap'], r['warm']):>12.2f}"
            )
    finally:
        bench.close()
    print("(times in ms)")


if __name__ == "__main__":
    main()
