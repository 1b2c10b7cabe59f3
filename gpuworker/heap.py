"""The worker's C heap: keep what executions reuse, hand back what a one-time burst left.

Executions allocate and free their activations on every run (resnet50: ~18 MB at
batch 1). With glibc's defaults the heap's free top is returned to the system once it
exceeds a trim threshold that glibc adjusts from the sizes it sees, and in a worker that
alternates models and swaps that threshold stays low: every resnet50 run after a
bert-base swap faulted its activations in again (4,672 page faults, about 10% of its
execution). `keep_free_heap` fixes the thresholds at start-up, so the heap keeps up to
TRIM_THRESHOLD of free memory for the next run.

Preparing a worker's first program of an architecture builds and traces the model
(on the meta device) and keeps only the lifted graphs; the tracing's temporary objects
are freed, and `release_free_heap` returns those pages at once (malloc_trim ignores
the threshold). Elsewhere than glibc both do nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
from typing import Any

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# Allocations above this are mmap'd and unmapped on free (32 MiB is glibc's ceiling for it);
# the heap's free top is kept up to TRIM_THRESHOLD: about three resnet50 activations' worth.
MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = 64 << 20


def _libc() -> Any | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.malloc_trim, libc.mallopt  # noqa: B018 - both exist only in glibc
    except (OSError, AttributeError):  # not glibc
        return None
    return libc


_lib = _libc()


def keep_free_heap() -> bool:
    """Fix glibc's trim and mmap thresholds (see the module's doc); True if they were set."""
    if _lib is None:
        return False
    # Both: setting either one turns glibc's own adjustment of both off.
    return bool(_lib.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(_lib.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def release_free_heap() -> None:
    """Collect cycles, then return the allocator's free pages to the system."""
    gc.collect()
    if _lib is not None:
        _lib.malloc_trim(0)
