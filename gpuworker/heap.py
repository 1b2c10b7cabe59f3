"""Hand the C heap's free pages back to the system after a one-time burst of allocation.

Preparing a worker's first program of an architecture builds and traces the model
(on the meta device) and keeps only the lifted graphs; the tracing's temporary objects
are freed, but glibc's malloc keeps the freed pages, about 2 MB per worker for
resnet50 -- more than a further function of that model costs the worker. malloc_trim
returns them. Elsewhere than glibc this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc


def _libc_trim() -> object | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


_trim = _libc_trim()


def release_free_heap() -> None:
    """Collect cycles, then return the allocator's free pages to the system."""
    gc.collect()
    if _trim is not None:
        _trim(0)
