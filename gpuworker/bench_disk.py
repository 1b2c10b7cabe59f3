"""A cold request from the disk tier, pipelined, against its parts, side by side in one run.

    python -m gpuworker.bench_disk [--models resnet50 bert-base] [--repeats 5]

For each model, with the worker's own code (CPU backend, arena, swap engine, gate) and
the image file format of the disk tier (shared/imagefile.py):
  disk read   a plain read of the image file into host shared memory (page cache dropped)
  memcpy      one plain copy of the image into the arena
  warm        one inference with the model resident
  from disk   a cold request: the file is read, checked and executed, overlapped group by
              group, until the result is in -- when the server answers (page cache dropped)
  host image  until the swap's reply too: a CPU device reads the file straight into its
              arena and fills the host image from there once that inference has ended
              (checked bitwise against the file here)
and the ratio from disk / max(disk read, memcpy, warm), taken within each round (the four are
measured back to back, so a slow spell of a shared machine moves them together) and its
median over rounds printed: the goal is <= 1.25.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from gpuworker.bench_swap import Bench, _input
from shared import imagefile, shm
from shared.bench_imagefile import drop_cache, plain_read
from shared.modelstore import ModelImage
from shared.protocol import Evict, Load, prepare_record


def measure(bench: Bench, name: str, repeats: int, tmp: Path) -> dict[str, float]:
    _, nbytes = bench.prepare(name)
    image = bench.images[-1]
    src = shm.attach(image.segment_name, writable=False)
    path = imagefile.write(tmp / f"{name}.img", f"{name}-disk", image.table, src.buf)
    src.close()
    info = imagefile.read_info(path)
    # The disk-tier copy of the model: an empty host segment the fill writes into.
    empty = ModelImage(shm.segment_name(f"bench-disk-{name}"), image.table)
    shm.create(empty.segment_name, nbytes).close()
    bench.images.append(empty)
    bench.executor.prepare(prepare_record(f"{name}-disk", {"zoo": name}, empty))
    x = _input(name)
    reads, copies, warm, cold, filled = [], [], [], [], []
    host = shm.attach(empty.segment_name, writable=True)
    try:
        for _ in range(repeats):
            drop_cache(path)
            t0 = time.perf_counter()
            plain_read(path, info.data_offset, nbytes)(host.buf)
            reads.append((time.perf_counter() - t0) * 1e3)
            src_t = bench.backend.host_buffer(image.segment_name)[:nbytes]
            t0 = time.perf_counter()
            bench.backend.arena[:nbytes].copy_(src_t)
            copies.append((time.perf_counter() - t0) * 1e3)
            swap = bench.load(name, 0)
            swap.done.wait()
            warm.append(statistics.median(bench.infer(name, x) for _ in range(3)))
            bench.executor.evict(Evict(model_id=name))
            drop_cache(path)
            t0 = time.perf_counter()
            bench.executor.load(1, Load(model_id=f"{name}-disk", offset=0, fill_from=str(path)))
            swap = bench.executor.resident[f"{name}-disk"].swap
            bench.infer(f"{name}-disk", x)
            cold.append((time.perf_counter() - t0) * 1e3)  # the server answers the request here
            swap.done.wait()  # the swap replies once the host image is written too, off the request's path
            filled.append((time.perf_counter() - t0) * 1e3)
            if swap.error:
                raise RuntimeError(swap.error)
            if imagefile.verify_buffer(info, host.buf) is not None:
                raise RuntimeError("the host image filled from disk differs from the file")
            bench.executor.evict(Evict(model_id=f"{name}-disk"))
    finally:
        host.close()
    med = statistics.median
    return {
        "bytes": nbytes,
        "read": med(reads),
        "memcpy": med(copies),
        "warm": med(warm),
        "cold": med(cold),
        "filled": med(filled),
        "ratio": med(c / max(r, m, w) for c, r, m, w in zip(cold, reads, copies, warm, strict=True)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["resnet50", "bert-base"])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="compute threads (copy and disk threads are extra)")
    args = ap.parse_args()
    shm.exit_on_sigterm()  # a kill still unlinks the segments made below
    bench = Bench.cpu(512 << 20, args.threads, 2 << 20)
    print(
        f"CPU device: {args.threads} compute thread(s), 1 copy thread, 1 disk thread on {os.cpu_count()} cores; "
        f"medians of {args.repeats} rounds; times in ms"
    )
    print(
        f"{'model':<10}{'MiB':>7}{'disk read':>10}{'memcpy':>8}{'warm':>8}{'from disk':>10}{'host image':>11}"
        f"{'from disk / max(read, memcpy, warm)':>37}"
    )
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for name in args.models:
                r = measure(bench, name, args.repeats, Path(tmp))
                print(
                    f"{name:<10}{r['bytes'] / 2**20:>7.1f}{r['read']:>10.1f}{r['memcpy']:>8.1f}{r['warm']:>8.1f}"
                    f"{r['cold']:>10.1f}{r['filled']:>11.1f}{r['ratio']:>37.2f}"
                )
    finally:
        bench.close()


if __name__ == "__main__":
    main()
