"""Host images that are not whole yet when a swap-in starts: read from disk here, or arriving from another node.

Either way the swap's copy thread follows a `HostFill` group by group (gpuworker/swap.py).
A disk-tier image is read by a thread of this worker (`read_image`); an image fetched from
other nodes is written by the gateway, which reports each verified prefix in FILL frames
(`HostFills`, keyed by the feed id a LOAD carries).
"""

from __future__ import annotations

import threading

import torch

from gpuworker.swap import HostFill
from shared import imagefile, shm
from shared.errors import RequestFailed, TorporError
from shared.protocol import Fill, Load


class HostFills:
    """Images arriving from another node, by feed id (Load.follow).

    The reader thread makes the entry when it reads the LOAD (`expect`), so the FILL frames
    read after it always find theirs; the swap drops it when it ends.
    """

    def __init__(self) -> None:
        self.pending: dict[int, HostFill] = {}
        self._lock = threading.Lock()

    def expect(self, body: Load) -> HostFill:
        assert body.follow is not None
        with self._lock:
            fill = self.pending.get(body.follow)
            if fill is None:
                fill = self.pending[body.follow] = HostFill()
                fill.advance(body.ready)
        return fill

    def advance(self, body: Fill) -> None:
        """More of a followed host image is verified (reader thread: the copy thread may be waiting for it)."""
        with self._lock:
            fill = self.pending.get(body.follow)
        if fill is None:
            return  # its swap ended already (failed, or cancelled by an eviction)
        if body.error is not None:
            fill.fail(body.error)
            return
        fill.advance(body.ready)
        if body.complete:
            fill.done()

    def drop(self, follow: int) -> None:
        with self._lock:
            self.pending.pop(follow, None)


def read_image(model_id: str, segment: str, path: str, arena: torch.Tensor | None) -> HostFill:
    """Read a model's image file into its (gateway-created) host segment on a thread of its own.

    Every chunk is checksum-verified before the copy thread may take it, so a damaged
    file fails the swap (and the request) instead of running on wrong weights. With
    `arena` (a CPU device's slice), the file is read into the slice and then copied to
    the host segment; the reader stops at a chunk boundary once the swap is cancelled,
    and `finished` tells an eviction that nothing writes into the slice any more.
    """
    fill = HostFill()

    def progress(upto: int) -> None:
        if fill.cancelled:
            raise RequestFailed("cancelled by an eviction")
        fill.advance(upto)

    def read() -> None:
        seg = shm.attach(segment, writable=True)
        try:
            if arena is None:
                imagefile.read_into(path, seg.buf, on_chunk=fill.advance, expect_model=model_id)
            else:
                # Direct reads land in the slice by DMA: the reader's own CPU work is the checksum,
                # and no second copy of the image stays behind in the page cache.
                target = arena.numpy()
                imagefile.read_into(path, target, progress, expect_model=model_id)
                # The host copy is not on the request's path: it waits for the inference that ran
                # on the arriving groups, instead of taking memory bandwidth and a core from it.
                fill.wait_runs()
                torch.frombuffer(seg.buf, dtype=torch.uint8)[: arena.numel()].copy_(arena)
            fill.done()
        except TorporError as exc:
            fill.fail(exc.message)
        except Exception as exc:  # the reader must always release the copy thread
            fill.fail(f"{type(exc).__name__}: {exc}")
        finally:
            seg.close()
            fill.finished.set()

    threading.Thread(target=read, name="disk-fill", daemon=True).start()
    return fill
