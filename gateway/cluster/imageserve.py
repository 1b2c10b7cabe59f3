"""A holder's side of an image transfer: the header and byte ranges of its packed image file.

`GET /internal/v1/images/{model_id}` answers the image's layout (tensor table, chunk
checksums) and this node's profile of the function, so the fetching node neither builds nor
profiles the model. `GET .../data` with one `Range: bytes=a-b` (image offsets, not file
offsets) answers 206 with those bytes: straight out of the host image's mapping when it is
in host memory (no copy on our side: the holder's CPU is what limits a transfer here), else
read from the state dir's image file with `pread` on a thread, a piece at a time. The
holder sends what it holds and checks nothing:
the fetching node verifies every chunk (shared/rangefetch.py), so a damaged file costs
a retry elsewhere, never a wrong answer. Both need the cluster token.
"""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from gateway import app as node_app
from gateway.hosttier import Tier
from gateway.registry import Function
from shared import imagefile, shm
from shared.errors import DamagedImage, InvalidInput, NotFound, Unauthorized

PIECE = 4 << 20
_RANGE = re.compile(r"^bytes=(\d+)-(\d+)$")


async def _held(request: Request) -> tuple[Function, imagefile.ImageFileInfo]:
    node = request.app.state.cluster
    if not node.forwarder.authentic(request):
        raise Unauthorized("node-to-node calls need the cluster token (x-torpor-cluster-token)")
    model_id = request.path_params["model_id"]
    svc = node.service
    fn = svc.registry.functions.get(model_id.partition("@")[0])
    # A node still fetching the image is no holder yet.
    if fn is None or fn.model_id != model_id or not fn.ready or fn.name in svc.tiers.feeds:
        raise NotFound(f"node {node.name} holds no image of {model_id}")
    unsaved = svc.tiers.unsaved.get(fn.name)
    if unsaved is not None:
        return fn, unsaved  # fetched, its file not written yet: served from host memory (pinned there)
    try:
        info = await _info(svc.images.path(model_id))
    except DamagedImage as exc:
        raise NotFound(f"node {node.name} has no usable image file of {model_id}: {exc.message}") from None
    return fn, info


# Headers of the image files served lately, by path: a fetch asks for dozens of ranges of one
# file, and re-reading its header for each (table and checksums, JSON) cost milliseconds apiece.
_INFOS: dict[str, tuple[tuple[int, int], imagefile.ImageFileInfo]] = {}


async def _info(path: Path) -> imagefile.ImageFileInfo:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise DamagedImage(f"{path}: no such image file") from None
    key = (st.st_mtime_ns, st.st_size)  # files are replaced whole (rename), never written in place
    cached = _INFOS.get(str(path))
    if cached is not None and cached[0] == key:
        return cached[1]
    info = await asyncio.to_thread(imagefile.read_info, path)
    if len(_INFOS) >= 64:
        _INFOS.clear()
    _INFOS[str(path)] = (key, info)
    return info


async def header(request: Request) -> Response:
    fn, info = await _held(request)
    return node_app.JSON(
        {
            "model_id": info.model_id,
            "nbytes": info.nbytes,
            "chunk_bytes": info.chunk_bytes,
            "checksums": list(info.checksums),
            "table": info.table.to_wire(),
            "digest": info.digest,
            "timing": fn.timing.to_wire() if fn.timing is not None else None,
        }
    )


async def data(request: Request) -> Response:
    fn, info = await _held(request)
    m = _RANGE.match(request.headers.get("range", ""))
    if m is None:
        raise InvalidInput("Range: expected one range 'bytes=FIRST-LAST' of image offsets")
    first, last = int(m.group(1)), int(m.group(2))
    if not first <= last < info.nbytes:
        raise InvalidInput(f"Range: bytes {first}-{last} are not within the image's {info.nbytes} bytes")
    content_range = f"bytes {first}-{last}/{info.nbytes}"
    svc = request.app.state.cluster.service
    state = svc.scheduler.functions.get(fn.name)
    if fn.image is not None and state is not None and state.host_tier == Tier.HOST:
        try:
            seg = shm.attach(fn.image.segment_name, writable=False)
        except FileNotFoundError:
            pass  # pushed to the disk tier just now: the file has it
        else:
            return _MappedRange(seg, first, last - first + 1, content_range)
    return _FileRange(info.path, info.data_offset + first, last - first + 1, content_range)


class _MappedRange(Response):
    """Bytes of the host image's mapping, sent as views (kept mapped until the last one is written)."""

    def __init__(self, seg: shm.Segment, offset: int, length: int, content_range: str) -> None:
        super().__init__(
            status_code=206, media_type="application/octet-stream", headers=_headers(content_range, length)
        )
        self.seg, self.offset, self.length = seg, offset, length

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            view = memoryview(self.seg.buf)[self.offset : self.offset + self.length]
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            for pos in range(0, self.length, PIECE):
                piece = view[pos : pos + PIECE]
                await send({"type": "http.response.body", "body": piece, "more_body": pos + PIECE < self.length})
        finally:
            self.seg.close()  # a view still queued in the transport keeps the mapping alive (see shm.Segment.close)


def _headers(content_range: str, length: int) -> dict[str, str]:
    return {"content-range": content_range, "content-length": str(length)}


class _FileRange(Response):
    def __init__(self, path: Any, offset: int, length: int, content_range: str) -> None:
        super().__init__(
            status_code=206, media_type="application/octet-stream", headers=_headers(content_range, length)
        )
        self.path, self.offset, self.length = path, offset, length

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        fd = await asyncio.to_thread(os.open, self.path, os.O_RDONLY)
        try:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            pos, left = self.offset, self.length
            while left > 0:
                piece = await asyncio.to_thread(os.pread, fd, min(PIECE, left), pos)
                if not piece:
                    break  # the file shrank under us: the client sees a cut-short range and goes elsewhere
                pos, left = pos + len(piece), left - len(piece)
                await send({"type": "http.response.body", "body": piece, "more_body": left > 0})
            if left > 0:
                raise DamagedImage(f"{self.path}: ended {left} bytes before the requested range")
        finally:
            os.close(fd)
