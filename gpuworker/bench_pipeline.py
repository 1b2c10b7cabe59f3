"""Pipeline-parallel cold start over two CPU devices against the one-device swap, side by side in one run.

    python -m gpuworker.bench_pipeline [--model bert-base] [--repeats 5] [--tokens N]

With the worker's own code (backends, arenas, swap engines, gate, stage split), for one model:
  warm       resident on one device, one inference
  1 device   the pipelined swap-in: copy and run at once, each layer waiting for its group
  2 devices  each device copies its stage's share at once over its own copy thread, the
             request runs stage 0 on device 0 then stage 1 on device 1 (the values crossing
             the cut handed over as frame buffers), as ParaServe's pipeline-parallel cold start
and the cold-start penalty (cold - warm) of each, their ratio (goal <= 0.6), and the
consolidation onto device 0 that follows (the rest of the image, then device 1's share evicted).
First it measures what a split relies on: a plain copy of the image by one thread against its
two halves copied at once by two threads into two devices (two links of their own would double
the rate; CPU devices share the host's memory bus).
Each device runs its stage on a thread of its own, 1 compute thread each (torch threads); a
third device keeps the model resident for the warm run timed just before each cold one.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from gpuworker.backends.cpu import CpuBackend
from gpuworker.bench_swap import _input
from gpuworker.config import WorkerConfig
from gpuworker.executor import Executor
from gpuworker.stages import cut_points
from shared import program, shm
from shared.modelstore import ModelImage, pack
from shared.protocol import Evict, Infer, Load, Part, prepare_record, tensor_meta

BUDGET = 512 << 20


class Device:
    def __init__(self, index: int, arenas: dict[int, str], group_bytes: int) -> None:
        peers = tuple((i, n) for i, n in arenas.items() if i != index)
        cfg = WorkerConfig(index, "cpu", index, BUDGET, "", arenas[index], peers, 1, group_bytes)
        self.backend = CpuBackend(cfg)
        self.replies: dict[int, Any] = {}
        self.executor = Executor(self.backend, group_bytes, self.replies.__setitem__)
        self.thread = ThreadPoolExecutor(1, thread_name_prefix=f"device{index}")  # its compute thread

    def run(self, body: Infer, buffers: list[Any]) -> tuple[Any, list[Any]]:
        return self.thread.submit(self.executor.infer, body, [bytearray(b) for b in buffers]).result()

    def evict(self, model_id: str) -> None:
        self.executor.evict(Evict(model_id=model_id))

    def close(self) -> None:
        self.thread.shutdown()
        self.executor.close()
        self.backend.close()


def _pipelined(devs: list[Device], m: str, cuts: list[int], x: dict[str, Any]) -> tuple[float, float]:
    """Both shares copied at once, one request through the stages: (seconds until its answer,
    ms its stages waited for groups still being copied)."""
    parts = [Part(cuts=cuts, stage=0, whole=True), Part(cuts=cuts, stage=1)]
    t = time.perf_counter()
    for d, part in zip(devs, parts, strict=True):
        d.executor.load(3, Load(model_id=m, offset=0, part=part))
    first, values = devs[0].run(Infer(model_id=m, inputs=[tensor_meta(x)], part=parts[0]), [x["data"]])
    second, _ = devs[1].run(Infer(model_id=m, inputs=first.outputs, part=parts[1]), values)
    return time.perf_counter() - t, first.wait_ms + second.wait_ms


def _consolidate(devs: list[Device], m: str) -> float:
    """The rest of the image onto device 0, then device 1's share evicted: seconds, one copy left."""
    for d in devs:
        d.executor.resident[m].swap.done.wait()
    t = time.perf_counter()
    devs[0].executor.load(4, Load(model_id=m, offset=0))
    devs[0].executor.resident[m].swap.done.wait()
    devs[1].evict(m)
    took = time.perf_counter() - t
    assert [m in d.executor.resident for d in devs] == [True, False], "consolidation leaves one copy"
    return took


def _copy_rates(devs: list[Device], image: ModelImage, repeats: int) -> tuple[float, float]:
    """Bytes/s of a plain copy of the image into device 0's arena by one thread, and of its two
    halves copied at once into devices 0 and 1 by two threads: how far the devices' "links" are
    their own (on GPUs behind two PCIe switches the second would be about twice the first)."""
    src = devs[0].backend.host_buffer(image.segment_name)[: image.nbytes]
    half = image.nbytes // 2
    dst = [devs[0].backend.arena[: image.nbytes], devs[1].backend.arena[:half]]
    two = ThreadPoolExecutor(2)
    one_s, two_s = [], []
    try:
        for _ in range(repeats):
            t = time.perf_counter()
            dst[0].copy_(src)
            one_s.append(time.perf_counter() - t)
            t = time.perf_counter()
            jobs = [two.submit(dst[0][:half].copy_, src[:half]), two.submit(dst[1].copy_, src[half : 2 * half])]
            for j in jobs:
                j.result()
            two_s.append(time.perf_counter() - t)
    finally:
        two.shutdown()
    return image.nbytes / statistics.median(one_s), 2 * half / statistics.median(two_s)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="bert-base")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--group", type=int, default=2 << 20, help="swap group bytes")
    ap.add_argument(
        "--first-share",
        type=float,
        nargs="+",
        default=[0.3, 0.5],
        help="fractions of the image in stage 0 (each a row)",
    )
    ap.add_argument(
        "--tokens",
        type=int,
        help="bert-base: requests of this many tokens instead of 128 (a short query: less compute, the same copy)",
    )
    args = ap.parse_args()
    shm.exit_on_sigterm()  # a kill still unlinks the segments made below
    torch.set_num_threads(1)
    # Devices 0 and 1 take the cold starts; device 2 keeps the model resident for the warm run
    # measured just before each cold one, so each penalty is a pair taken moments apart (this
    # machine is shared: its speed drifts by tens of percent within a minute).
    arenas = {i: shm.segment_name(f"bench-pp-arena{i}") for i in range(3)}
    for name in arenas.values():
        shm.create(name, BUDGET).close()
    devs = [Device(i, arenas, args.group) for i in range(3)]
    gm = program.build({"zoo": args.model}, meta=False)
    image: ModelImage = pack(program.packing_order(gm), shm.segment_name("bench-pp-image"))
    try:
        m = args.model
        for d in devs:
            d.executor.prepare(prepare_record(m, {"zoo": m}, image))
        prog = devs[0].executor.programs[m]
        lifted = devs[0].executor.lifted_of(prog)
        splits = [list(cut_points(lifted, prog.plan, 2, (f, 1 - f))) for f in args.first_share]
        x = _input(m, args.tokens)
        body, data = Infer(model_id=m, inputs=[tensor_meta(x)]), [x["data"]]
        devs[2].executor.load(0, Load(model_id=m, offset=0))
        devs[2].executor.resident[m].swap.done.wait()
        _, out = devs[2].run(body, data)
        reference = bytes(out[0])

        def warm() -> float:
            t = time.perf_counter()
            devs[2].run(body, data)
            return time.perf_counter() - t

        warms, one, one_wait = [], [], []
        two: list[list[float]] = [[] for _ in splits]
        two_wait: list[list[float]] = [[] for _ in splits]
        consolidate: list[float] = []
        for _ in range(args.repeats):
            # one device: the pipelined swap-in
            w = warm()
            warms.append(w)
            t = time.perf_counter()
            devs[0].executor.load(2, Load(model_id=m, offset=0))
            inferred, out = devs[0].run(body, data)
            one.append(time.perf_counter() - t - w)
            one_wait.append(inferred.wait_ms)
            assert bytes(out[0]) == reference
            devs[0].executor.resident[m].swap.done.wait()
            devs[0].evict(m)
            for cuts, penalties, waits in zip(splits, two, two_wait, strict=True):
                w = warm()
                took, waited = _pipelined(devs[:2], m, cuts, x)
                penalties.append(took - w)
                waits.append(waited)
                consolidate.append(_consolidate(devs[:2], m))
                _, out = devs[0].run(body, data)
                assert bytes(out[0]) == reference, "the consolidated model's output differs"
                devs[0].evict(m)
        one_rate, two_rate = _copy_rates(devs, image, args.repeats)
        med = statistics.median
        p1 = med(one) * 1e3
        print(
            f"{m}: {image.nbytes / 2**20:.1f} MiB; 2 CPU devices, 1 compute + 1 copy thread each, on "
            f"{os.cpu_count()} cores; groups of {args.group / 2**20:g} MiB; median of {args.repeats}; "
            "outputs bitwise equal to the one-device run"
        )
        print(
            f"  plain copy of the image: 1 thread {one_rate / 1e9:.1f} GB/s, its halves by 2 threads into 2 devices at "
            f"once {two_rate / 1e9:.1f} GB/s: 2 devices / 1 = {two_rate / one_rate:.2f} (links of their own: ~2)"
        )
        print(f"  warm {med(warms) * 1e3:.1f} ms (penalty = cold - the warm run just before it)")
        print(
            f"  cold, 1 device (pipelined swap)            penalty {p1:6.1f} ms"
            f"   waited for groups {med(one_wait):5.1f} ms"
        )
        for f, cuts, penalties, waits in zip(args.first_share, splits, two, two_wait, strict=True):
            p2 = med(penalties) * 1e3
            share = prog.plan.bounds[cuts[1]] / 2**20
            print(
                f"  cold, 2 devices (stage 0: {share:5.1f} MiB, {f:.2f})  penalty {p2:6.1f} ms"
                f"   waited for groups {med(waits):5.1f} ms   penalty 2 devices / 1 device "
                f"{p2 / p1:.2f} (goal <= 0.6)"
            )
        print(f"  consolidation onto device 0 (the rest of the image, then one copy): {med(consolidate) * 1e3:.1f} ms")
    finally:
        for d in devs:
            d.close()
        image.unlink()
        for name in arenas.values():
            shm.unlink(name)


if __name__ == "__main__":
    main()
