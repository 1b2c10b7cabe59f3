"""Load beside a timed run, in processes of its own: what other CPU devices do to the host.

    python -m shared.loadproc THREADS copy BYTES | model ZOO_NAME

Each process computes on THREADS torch threads until killed: `copy` copies a buffer over
and over (a swap-in's memory traffic), `model` runs a zoo model's batch-1 inference
(another device executing). It prints
"ready" once the work is about to start.

Processes rather than threads of the timing process: a server's devices are processes,
so they compete for cores, caches and memory bandwidth but never for one interpreter's
lock; a load on a thread beside the timed one took turns with it and measured no
slowdown (resnet50 1.00 in-process, 1.15 beside another worker on the server).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable

import torch


def _step(kind: str, arg: str) -> Callable[[], object]:
    if kind == "copy":
        src = torch.ones(int(arg), dtype=torch.uint8)
        dst = torch.empty_like(src)
        return lambda: dst.copy_(src)
    if kind == "model":
        from shared import program, zoo
        from shared.profiling import random_tensors

        model = program.build({"zoo": arg}, meta=False)
        inputs = random_tensors(zoo.entry(arg).inputs, 1, seed=1)
        return lambda: model(*inputs)
    raise SystemExit(f"loadproc: unknown load {kind!r}: expected copy or model")


def main(argv: list[str]) -> None:
    threads, kind, arg = int(argv[0]), argv[1], argv[2] if len(argv) > 2 else ""
    torch.set_num_threads(threads)
    step = _step(kind, arg)
    with torch.inference_mode():
        step()
        print("ready", flush=True)
        while True:
            step()


class LoadProcesses:
    """`count` load processes (see the module's doc) from `with` entry until exit."""

    def __init__(self, count: int, threads: int, kind: str, arg: str = "") -> None:
        self._cmd = [sys.executable, "-m", "shared.loadproc", str(threads), kind, arg]
        self._count = count
        self._procs: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> LoadProcesses:
        for _ in range(self._count):
            self._procs.append(subprocess.Popen(self._cmd, stdout=subprocess.PIPE))
        for proc in self._procs:
            if proc.stdout is None or proc.stdout.readline().strip() != b"ready":
                self.__exit__()
                raise RuntimeError(f"a load process ({' '.join(self._cmd[3:])}) did not start")
        return self

    def pause(self) -> None:
        for proc in self._procs:
            os.kill(proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        for proc in self._procs:
            os.kill(proc.pid, signal.SIGCONT)

    def __exit__(self, *exc: object) -> None:
        for proc in self._procs:
            proc.kill()
            proc.wait()
        self._procs.clear()


if __name__ == "__main__":
    main(sys.argv[1:])
