"""The worker's heap thresholds: activations freed at the end of a run are reused, not faulted in again."""

from __future__ import annotations

import subprocess
import sys

import pytest

from gpuworker import heap

# Allocate 40 MiB in 1 MiB blocks (below the mmap threshold: from the heap), touch them,
# free them all, allocate and touch again; print the page faults of the second round.
_ROUNDS = """
import ctypes, ctypes.util, resource, sys
from gpuworker import heap
if sys.argv[1] == "keep":
    assert heap.keep_free_heap()
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
def touch_all():
    blocks = [libc.malloc(1 << 20) for _ in range(40)]
    for b in blocks:
        ctypes.memset(b, 1, 1 << 20)
    return blocks
for b in reversed(touch_all()):
    libc.free(b)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
touch_all()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", _ROUNDS, mode], capture_output=True, text=True, check=True)
    return int(out.stdout)


@pytest.mark.skipif(heap._lib is None, reason="the thresholds are glibc's; this C library has none")
def test_freed_heap_is_kept_for_the_next_run() -> None:
    pages = (40 << 20) // 4096
    # glibc's defaults hand the freed 40 MiB back and fault it in again; the worker's keep it.
    assert _faults("default") > pages // 2
    assert _faults("keep") < pages // 20
