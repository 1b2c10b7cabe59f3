"""Restoring a model image from disk vs a plain read of the same file, side by side in one run.

    python -m shared.bench_imagefile [--model bert-base] [--repeat 5]

Packs a zoo model, writes its image file, then times, alternately and `--repeat` times:
  plain    readinto of the whole file into a new shared-memory segment, nothing checked;
  restore  imagefile.read_into into a new segment, every chunk's checksum verified.
Each twice: "cold" after dropping the file from the page cache (posix_fadvise DONTNEED,
so the bytes come from the disk) and "warm" (from the page cache). Prints medians and
restore ÷ plain bandwidth (1.0 = restoring costs nothing over reading).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from shared import imagefile, program, shm
from shared.modelstore import pack


def drop_cache(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def _into_segment(nbytes: int, fill) -> float:
    seg = shm.create(shm.segment_name(f"bench-image-{time.monotonic_ns()}"), nbytes)
    try:
        t0 = time.perf_counter()
        fill(seg.buf)
        return time.perf_counter() - t0
    finally:
        seg.close()
        shm.unlink(seg.name)


def plain_read(path: Path, offset: int, nbytes: int):
    def fill(buf) -> None:
        view = memoryview(buf)[:nbytes]
        with open(path, "rb", buffering=0) as f:
            f.seek(offset)
            got = 0
            while got < nbytes:
                got += f.readinto(view[got:])

    return fill


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="bert-base")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    shm.exit_on_sigterm()  # a kill still unlinks the segments made below
    gm = program.build({"zoo": args.model, "seed": 0}, meta=False)
    with torch.inference_mode():
        image = pack(program.packing_order(gm), shm.segment_name("bench-image-src"))
    del gm
    with tempfile.TemporaryDirectory() as tmp:
        src = shm.attach(image.segment_name, writable=False)
        path = imagefile.write(Path(tmp) / "model.img", args.model, image.table, src.buf)
        src.close()
        image.unlink()
        info = imagefile.read_info(path)
        n = info.nbytes
        print(
            f"{args.model}: image {n / 2**20:.1f} MiB, file {path.stat().st_size / 2**20:.1f} MiB, "
            f"{len(info.checksums)} chunks of {info.chunk_bytes >> 20} MiB"
        )
        for temp in ("cold", "warm"):
            plain: list[float] = []
            restore: list[float] = []
            for _ in range(args.repeat):
                for kind, out in (("plain", plain), ("restore", restore)):
                    if temp == "cold":
                        drop_cache(path)
                    else:
                        _into_segment(n, plain_read(path, info.data_offset, n))  # make sure it is cached
                    fill = (
                        plain_read(path, info.data_offset, n)
                        if kind == "plain"
                        else (lambda buf: imagefile.read_into(path, buf))
                    )
                    out.append(_into_segment(n, fill))
            p, r = statistics.median(plain), statistics.median(restore)
            print(
                f"  {temp:4}  plain read {n / p / 1e9:5.2f} GB/s   restore (checked) {n / r / 1e9:5.2f} GB/s   "
                f"restore / plain bandwidth {p / r:.2f}"
            )


if __name__ == "__main__":
    main()
