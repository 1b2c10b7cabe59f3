"""A model image on disk: the exact bytes of its shared-memory image, checked chunk by chunk.

The file is what a `ModelImage` segment holds, behind a small header, so restoring it
is one sequential read straight into a new segment -- no model building, no
unpickling, no intermediate buffer:

    offset 0       b"TORPORIM", format version (u32), metadata length (u32)
    offset 16      metadata: JSON {model_id, table, nbytes, chunk_bytes, checksums}
    DATA_ALIGN     the image bytes (table.nbytes of them), in first-use order

Every `chunk_bytes` of the image carries an XXH3-64 checksum, so a reader verifies
each chunk as it arrives (at memory speed, far above any disk's) and a damaged file
is refused naming the chunk, never served. Chunks are checked in order, which lets a
cold request start on the first groups while later ones are still being read
(`read_into`'s `on_chunk`).

Writes go to a temporary file that is fsynced and renamed over the target, so a file
under its final name is always whole.
"""

from __future__ import annotations

import ctypes
import errno
import os
import queue
import struct
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import xxhash

from shared.errors import DamagedImage
from shared.modelstore import TensorTable

MAGIC = b"TORPORIM"
VERSION = 1
_PREFIX = struct.Struct("<8sII")  # magic, version, metadata length
DATA_ALIGN = 4096  # the image starts on a page: reads land page-aligned in the segment
CHUNK_BYTES = 4 << 20  # a few copy groups: fine-grained enough to pipeline, cheap to check
READERS = 2  # reader threads of a restore (read_into with overlap): requests in flight at the disk
MAX_META_BYTES = 64 << 20


@dataclass(frozen=True)
class ImageFileInfo:
    path: Path
    model_id: str
    table: TensorTable
    chunk_bytes: int
    checksums: tuple[int, ...]
    data_offset: int

    @property
    def nbytes(self) -> int:
        return self.table.nbytes

    @property
    def digest(self) -> str:
        return layout_digest(self.model_id, self.table, self.chunk_bytes, self.checksums)


def layout_digest(model_id: str, table: TensorTable, chunk_bytes: int, checksums: Sequence[int]) -> str:
    """One digest of what an image's bytes must be (its table and chunk checksums).

    The cluster registry keeps it with the function, so a node fetching the image checks the
    header a holder sends against it before trusting that header's checksums.
    """
    wire = [model_id, table.to_wire(), chunk_bytes, list(checksums)]
    return xxhash.xxh3_128_hexdigest(orjson.dumps(wire))


def _checksums(data: memoryview, chunk: int) -> list[int]:
    return [xxhash.xxh3_64_intdigest(data[i : i + chunk]) for i in range(0, len(data), chunk)]


def write(path: str | Path, model_id: str, table: TensorTable, data: Any, chunk_bytes: int = CHUNK_BYTES) -> Path:
    """Write an image's bytes (a buffer of `table.nbytes` bytes) to `path`, atomically."""
    path = Path(path)
    view = memoryview(data).cast("B")
    if len(view) < table.nbytes:
        raise ValueError(f"image of {len(view)} bytes is shorter than its table's {table.nbytes}")
    view = view[: table.nbytes]
    meta = orjson.dumps(
        {
            "model_id": model_id,
            "table": table.to_wire(),
            "nbytes": table.nbytes,
            "chunk_bytes": chunk_bytes,
            "checksums": _checksums(view, chunk_bytes),
        }
    )
    head = _PREFIX.pack(MAGIC, VERSION, len(meta)) + meta
    data_offset = _align(len(head))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(head + bytes(data_offset - len(head)))
            f.write(view)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def read_info(path: str | Path) -> ImageFileInfo:
    """The header of an image file, checked for format and consistency (not the data)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            prefix = f.read(_PREFIX.size)
            if len(prefix) < _PREFIX.size:
                raise DamagedImage(f"{path}: not a torpor image file (too short)")
            magic, version, meta_len = _PREFIX.unpack(prefix)
            if magic != MAGIC:
                raise DamagedImage(f"{path}: not a torpor image file")
            if version != VERSION:
                raise DamagedImage(f"{path}: image format version {version}; this torpor reads version {VERSION}")
            if meta_len > MAX_META_BYTES:
                raise DamagedImage(f"{path}: damaged header (metadata of {meta_len} bytes)")
            raw = f.read(meta_len)
            size = os.fstat(f.fileno()).st_size
    except FileNotFoundError:
        raise DamagedImage(f"{path}: no such image file") from None
    try:
        meta = orjson.loads(raw)
        table = TensorTable.from_wire(meta["table"])
        info = ImageFileInfo(
            path,
            str(meta["model_id"]),
            table,
            int(meta["chunk_bytes"]),
            tuple(int(c) for c in meta["checksums"]),
            _align(_PREFIX.size + meta_len),
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise DamagedImage(f"{path}: damaged header ({exc})") from None
    chunks = -(-info.nbytes // info.chunk_bytes) if info.chunk_bytes > 0 else -1
    if info.chunk_bytes <= 0 or len(info.checksums) != chunks or int(meta["nbytes"]) != info.nbytes:
        raise DamagedImage(f"{path}: damaged header (chunk table does not match the image size)")
    if size < info.data_offset + info.nbytes:
        raise DamagedImage(f"{path}: truncated: {size} bytes, the header promises {info.data_offset + info.nbytes}")
    return info


def read_into(
    path: str | Path,
    dest: Any,
    on_chunk: Callable[[int], None] | None = None,
    expect_model: str | None = None,
) -> ImageFileInfo:
    """Read an image file straight into `dest` (a writable buffer of at least its size).

    Each chunk is verified as soon as it is read; `on_chunk(bytes_ready)` is called after
    every verified chunk, so a consumer may start on the first bytes while the rest
    arrives (it may raise to stop the read). A damaged chunk raises DamagedImage naming
    it; the bytes already reported stay valid, the rest of `dest` is undefined.
    """
    info = read_info(path)
    if expect_model is not None and info.model_id != expect_model:
        raise DamagedImage(f"{info.path}: holds model {info.model_id!r}, expected {expect_model!r}")
    view = memoryview(dest).cast("B")
    if len(view) < info.nbytes:
        raise ValueError(f"destination of {len(view)} bytes for an image of {info.nbytes}")
    # Reader threads stay ahead while this thread checks, chunk by chunk in order: the reads
    # and the hash each release the GIL, so on two cores checking hides behind reading. Two
    # readers (alternate chunks) keep two requests at the disk: a direct read has no readahead.
    arrived: queue.SimpleQueue[tuple[int, int] | BaseException] = queue.SimpleQueue()
    stop = threading.Event()
    readers = [
        threading.Thread(target=_read_chunks, args=(info, view, k, READERS, arrived, stop), daemon=True)
        for k in range(READERS)
    ]
    for reader in readers:
        reader.start()
    ready: dict[int, int] = {}  # chunk index -> its end, read but not yet checked
    try:
        for index in range(len(info.checksums)):
            while index not in ready:
                got = arrived.get()
                if isinstance(got, BaseException):
                    raise got
                ready[got[0]] = got[1]
            end = ready.pop(index)
            _check_chunk(info, view, index, index * info.chunk_bytes, end)
            if on_chunk is not None:
                on_chunk(end)
    finally:
        stop.set()
        for reader in readers:
            reader.join()
    return info


def _check_chunk(info: ImageFileInfo, view: memoryview, index: int, start: int, end: int) -> None:
    if xxhash.xxh3_64_intdigest(view[start:end]) != info.checksums[index]:
        raise DamagedImage(f"{info.path}: damaged: chunk {index} (bytes {start}..{end}) fails its checksum")


def _read_chunks(
    info: ImageFileInfo,
    view: memoryview,
    first: int,
    step: int,
    arrived: queue.SimpleQueue[tuple[int, int] | BaseException],
    stop: threading.Event,
) -> None:
    """Read chunks first, first+step, ... into `view`, posting (index, end offset) of each (or the error)."""
    try:
        with _Source(info, direct=True) as src:
            for index in range(first, len(info.checksums), step):
                if stop.is_set():
                    return
                start = index * info.chunk_bytes
                end = min(start + info.chunk_bytes, info.nbytes)
                src.read(view[start:end], start)
                arrived.put((index, end))
    except BaseException as exc:  # handed to the checking thread, which raises it
        arrived.put(exc if isinstance(exc, DamagedImage) else DamagedImage(f"{info.path}: read failed: {exc}"))


def verify_buffer(info: ImageFileInfo, data: Any) -> int | None:
    """The first chunk of `data` (an image's bytes) that differs from the file's checksums, or None."""
    view = memoryview(data).cast("B")[: info.nbytes]
    for index, got in enumerate(_checksums(view, info.chunk_bytes)):
        if got != info.checksums[index]:
            return index
    return None


class _Source:
    """An image file's data, read by image offset.

    With `direct`, a file that is not in the page cache is read with O_DIRECT: the disk's DMA
    lands in the destination itself, where a buffered read fills the page cache and then
    copies out of it -- a second pass over memory and a second copy of the image in RAM
    (restoring 10 GB of images into shared memory doubled the memory in use). Only for a
    reader that does nothing but read (`read_into`'s reader threads): a direct read has no
    readahead, so a reader that checked each chunk between reads would leave the disk idle
    meanwhile (on this machine's bert-base disk-tier request: 545-578 ms direct against
    412-453 ms buffered, from one thread reading and checking). Pieces that are not
    block-aligned (an image's last bytes), a file whose pages are cached, and filesystems
    without O_DIRECT go through the page cache.
    """

    def __init__(self, info: ImageFileInfo, direct: bool) -> None:
        self.info = info
        self.fd = os.open(info.path, os.O_RDONLY)
        self.direct = -1
        if direct and hasattr(os, "O_DIRECT") and not self._cached():
            try:
                self.direct = os.open(info.path, os.O_RDONLY | os.O_DIRECT)
            except OSError:  # e.g. tmpfs, some overlay filesystems
                self.direct = -1

    def _cached(self) -> bool:
        """Whether the data's first, middle and last pages are in the page cache (then it all likely is)."""
        if not hasattr(os, "RWF_NOWAIT"):
            return False
        probe = bytearray(DATA_ALIGN)
        for at in {0, self.info.nbytes // 2, max(0, self.info.nbytes - 1)}:
            offset = self.info.data_offset + at // DATA_ALIGN * DATA_ALIGN
            try:
                if os.preadv(self.fd, [probe], offset, os.RWF_NOWAIT) <= 0:
                    return False
            except OSError:  # EAGAIN: not cached; EOPNOTSUPP: cannot tell
                return False
        return True

    def read(self, view: memoryview, start: int) -> None:
        """Fill `view` with the image's bytes from `start` on."""
        got, fd = 0, self.fd
        if self.direct >= 0 and _aligned(view, start):
            fd = self.direct
        while got < len(view):
            try:
                n = os.preadv(fd, [view[got:]], self.info.data_offset + start + got)
            except OSError as exc:
                if fd == self.direct and exc.errno == errno.EINVAL:  # the device wants another alignment
                    fd = self.fd
                    continue
                raise
            if not n:
                raise DamagedImage(f"{self.info.path}: truncated while reading")
            got += n
            if fd == self.direct and (start + got) % DATA_ALIGN:
                fd = self.fd  # a short direct read left an unaligned rest

    def __enter__(self) -> _Source:
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)
        if self.direct >= 0:
            os.close(self.direct)


def _aligned(view: memoryview, start: int) -> bool:
    """Whether a direct read may fill `view` from image offset `start` (block-aligned address, offset, length)."""
    if start % DATA_ALIGN or len(view) % DATA_ALIGN or not len(view):
        return False
    return ctypes.addressof(ctypes.c_char.from_buffer(view)) % DATA_ALIGN == 0


def _align(n: int) -> int:
    return (n + DATA_ALIGN - 1) // DATA_ALIGN * DATA_ALIGN


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
