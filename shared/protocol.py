"""The gateway <-> worker wire protocol: one typed record per message kind, tensors out of band.

A frame is::

    u32 length of the rest | u32 header length | header | buffer 0 | buffer 1 | ...

(big-endian lengths). The header is msgpack ``[kind, rid, body, [buffer sizes]]``:
``kind`` is one byte (`Kind`), ``body`` the record for that kind (a msgspec Struct,
encoded as a map). Tensor bytes never enter the header: a `TensorMeta` in the body
describes the tensor and its bytes are the frame's buffer of the same position, so a
worker receives each tensor straight into the memory torch then views, and nothing
is ever pickled.

Every body is decoded into its record and type-checked here, once, at the edge: a
wrong field type or an unknown kind is a `ProtocolError` naming the field, answered
with ERROR; only broken framing (`FramingError`) ends a connection.
"""

from __future__ import annotations

import enum
import io
import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any

import msgspec

from shared.errors import ProtocolError


class FramingError(ProtocolError):
    """The byte stream itself is broken (bad length, cut short): no way to find the next frame."""


class BadFrame(ProtocolError):
    """A well-framed message whose content is wrong; `rid` says which request to answer (0: unknown)."""

    def __init__(self, message: str, rid: int = 0) -> None:
        super().__init__(message)
        self.rid = rid


HEADER = struct.Struct(">I")
# Largest frame either side accepts; bigger lengths mean a corrupt stream.
MAX_FRAME_BYTES = 1 << 30

Size = Annotated[int, msgspec.Meta(ge=0)]


class Kind(enum.IntEnum):
    # worker -> gateway
    READY = 1  # first frame on a connection: the worker can serve, and what its device is
    ERROR = 3  # failed reply to the request with the same id
    PREPARED = 20  # replies, one kind per request kind
    LOADED = 21
    EVICTED = 22
    INFERRED = 23
    STATS_REPLY = 24
    FORGOTTEN = 25
    BYE = 26
    PEERS_OPENED = 27
    HOST_RELEASED = 28
    # gateway -> worker
    PREPARE = 10  # build the model's program skeleton (no weights)
    LOAD = 11  # copy a model's weights into the arena (swap in)
    EVICT = 12  # drop a resident model; its arena slice is free again
    INFER = 13  # run a resident (or loading) model on inputs
    STATS = 14  # report device statistics
    FORGET = 15  # release everything held for a removed model
    SHUTDOWN = 16  # finish and exit
    PEERS = 17  # the other devices' arena handles, for peer copies
    RELEASE_HOST = 18  # unmap a model's host image (it went to the disk tier); keep its program
    FILL = 19  # one-way, no reply: more of a followed host image has arrived (see Load.follow)


class Record(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Base of every message body."""


class TensorMeta(Record):
    """A tensor's description; its bytes are the frame buffer at the same position."""

    name: str
    datatype: str  # KServe datatype, e.g. "FP32"
    shape: list[Size]


class TableWire(Record):
    nbytes: Size
    entries: list[tuple[str, str, list[Size], Size, Size]]  # name, dtype, shape, offset, bytes


class ImageWire(Record):
    segment: str
    table: TableWire


class Peer(Record):
    device: Size
    offset: Size


class Part(Record):
    """One stage of a model split across devices at these swap-group cuts (pipeline-parallel cold start).

    On LOAD: copy only that stage's share of the image; `whole` says the slice is the whole
    model's size (the device the model is consolidated onto), else only the share's. On INFER:
    run only that stage; inputs and outputs are the values crossing its cuts.
    """

    cuts: list[Size]
    stage: Size
    whole: bool = False


# -- gateway -> worker ------------------------------------------------------------------
class Prepare(Record):
    model_id: str
    source: dict[str, Any]  # {"zoo": name, "seed": n} or {"pt2": path}
    image: ImageWire


class Load(Record):
    model_id: str
    offset: Size
    peer: Peer | None = None  # copy from this device's arena instead of the host image
    # The host image is still on disk (disk tier): the worker reads this image file into the
    # host segment while the copy follows it group by group.
    fill_from: str | None = None
    # The host image is still arriving from another node, written into the host segment by the
    # gateway: `ready` bytes are verified now, FILL frames with this id say when more are.
    follow: int | None = None
    ready: Size = 0
    # Copy only one pipeline stage's share. A LOAD without a part of a model whose first stage
    # is resident in a whole slice at this offset consolidates it: the rest of the image is copied.
    part: Part | None = None


class Evict(Record):
    model_id: str


class Infer(Record):
    model_id: str
    inputs: list[TensorMeta]  # one frame buffer each, in order
    output_names: list[str] = []
    part: Part | None = None  # run only this pipeline stage


class Stats(Record):
    pass


class Forget(Record):
    model_id: str


class ReleaseHost(Record):
    model_id: str


class Fill(Record):
    """How much of a followed host image is verified now; the last one says complete (or the error)."""

    follow: int
    ready: Size
    complete: bool = False
    error: str | None = None


class Shutdown(Record):
    pass


class Peers(Record):
    handles: dict[str, Any]  # device -> what its backend shares (CUDA IPC handle)


# -- worker -> gateway --------------------------------------------------------------------
class Ready(Record):
    device: Size
    kind: str  # "cpu" or "cuda"
    ordinal: Size  # CUDA ordinal / NVML index of a GPU, position of a CPU device
    pid: int
    budget: Size  # arena bytes
    backend: str
    compute_threads: int
    copy_threads: int
    arena: Any = None  # what peers need to read the arena (CUDA IPC handle)
    link_gbps: dict[str, float] = {}  # measured: "host", "peer", "peer:<device>"
    gpu: str | None = None
    free_bytes: int | None = None
    total_bytes: int | None = None
    nvml: dict[str, Any] | None = None  # gpuworker/backends/topology.py gpu_report; checked by the gateway


class Error(Record):
    kind: str
    message: str


class StageCuts(Record):
    """A model's pipeline stages over k = len(cuts) - 1 devices, as the worker cuts it
    (gpuworker/stages.py): the swap-group cuts, and the bytes of the image each stage's device loads."""

    cuts: list[Size]
    sizes: list[Size]


class Prepared(Record):
    groups: int
    # Its cuts for 2, 3, ... stages (as many as its groups allow, up to MAX_STAGES): what the
    # gateway sizes a split cold start's shares by and sends back in each stage's `Part`.
    stages: list[StageCuts] = []


class Loaded(Record):
    swap_ms: float
    bytes: Size
    source: str  # "host" or "peer:<device>"


class Evicted(Record):
    evicted: bool


class Inferred(Record):
    outputs: list[TensorMeta]  # one frame buffer each, in order
    exec_ms: float
    wait_ms: float


class ResidentModel(Record):
    model_id: str
    offset: Size
    bytes: Size
    source: str


class StatsReply(Record):
    resident: list[ResidentModel]
    prepared: int
    busy_for_s: float
    counters: dict[str, float]
    backend: str
    compute_threads: int
    copy_threads: int
    link_gbps: dict[str, float] = {}
    gpu: str | None = None
    free_bytes: int | None = None
    total_bytes: int | None = None
    nvml: dict[str, Any] | None = None


class Forgotten(Record):
    forgotten: bool


class HostReleased(Record):
    released: bool


class Bye(Record):
    pass


class PeersOpened(Record):
    peers: int
    link_gbps: dict[str, float] = {}


RECORD: dict[Kind, type[Record]] = {
    Kind.READY: Ready,
    Kind.ERROR: Error,
    Kind.PREPARED: Prepared,
    Kind.LOADED: Loaded,
    Kind.EVICTED: Evicted,
    Kind.INFERRED: Inferred,
    Kind.STATS_REPLY: StatsReply,
    Kind.FORGOTTEN: Forgotten,
    Kind.BYE: Bye,
    Kind.PEERS_OPENED: PeersOpened,
    Kind.HOST_RELEASED: HostReleased,
    Kind.PREPARE: Prepare,
    Kind.LOAD: Load,
    Kind.EVICT: Evict,
    Kind.INFER: Infer,
    Kind.STATS: Stats,
    Kind.FORGET: Forget,
    Kind.SHUTDOWN: Shutdown,
    Kind.PEERS: Peers,
    Kind.RELEASE_HOST: ReleaseHost,
    Kind.FILL: Fill,
}
KIND_OF: dict[type[Record], Kind] = {t: k for k, t in RECORD.items()}
# Gateway -> worker frames nothing waits on: no reply, rid 0.
ONE_WAY = frozenset({Kind.FILL})
# The reply kind each request kind expects on success (ERROR otherwise).
REPLY: dict[Kind, Kind] = {
    Kind.PREPARE: Kind.PREPARED,
    Kind.LOAD: Kind.LOADED,
    Kind.EVICT: Kind.EVICTED,
    Kind.INFER: Kind.INFERRED,
    Kind.STATS: Kind.STATS_REPLY,
    Kind.FORGET: Kind.FORGOTTEN,
    Kind.SHUTDOWN: Kind.BYE,
    Kind.PEERS: Kind.PEERS_OPENED,
    Kind.RELEASE_HOST: Kind.HOST_RELEASED,
}

Buffer = bytes | bytearray | memoryview


@dataclass(frozen=True, slots=True)
class Frame:
    kind: Kind
    rid: int
    body: Record
    buffers: list[Buffer] = field(default_factory=list)  # out-of-band tensor bytes


_encoder = msgspec.msgpack.Encoder()
_header_decoder = msgspec.msgpack.Decoder(tuple[int, int, msgspec.Raw, list[Size]])
_decoders = {k: msgspec.msgpack.Decoder(t) for k, t in RECORD.items()}


def encode_parts(body: Record, rid: int, buffers: Sequence[Buffer] = ()) -> list[Buffer]:
    """A frame as pieces to write in order (buffers are not copied into the header)."""
    sizes = [memoryview(b).nbytes for b in buffers]
    header = _encoder.encode((int(KIND_OF[type(body)]), rid, body, sizes))
    total = HEADER.size + len(header) + sum(sizes)
    if total > MAX_FRAME_BYTES:
        raise ProtocolError(f"a frame of {total} bytes exceeds the {MAX_FRAME_BYTES} limit")
    return [HEADER.pack(total) + HEADER.pack(len(header)) + header, *buffers]


def encode(body: Record, rid: int, buffers: Sequence[Buffer] = ()) -> bytes:
    """A whole frame as one bytes object (tests, small frames)."""
    return b"".join(bytes(p) if not isinstance(p, bytes) else p for p in encode_parts(body, rid, buffers))


def decode_header(header: Buffer) -> tuple[Kind, int, msgspec.Raw, list[int]]:
    try:
        kind, rid, raw, sizes = _header_decoder.decode(header)
    except msgspec.MsgspecError as exc:
        raise BadFrame(f"undecodable frame header: {exc}") from exc
    try:
        return Kind(kind), rid, raw, sizes
    except ValueError:
        raise BadFrame(f"unknown frame kind {kind!r}", rid) from None


def decode_body(kind: Kind, rid: int, raw: msgspec.Raw) -> Record:
    try:
        return _decoders[kind].decode(raw)
    except msgspec.MsgspecError as exc:
        raise BadFrame(f"{kind.name} frame: {exc}", rid) from exc


def decode_payload(payload: Buffer) -> Frame:
    """A frame after its length prefix (the gateway reads it whole); buffers are views, not copies."""
    view = memoryview(payload)
    if view.nbytes < HEADER.size:
        raise BadFrame("frame too short for its header length")
    (hlen,) = HEADER.unpack(view[: HEADER.size])
    if hlen > view.nbytes - HEADER.size:
        raise BadFrame(f"header of {hlen} bytes in a frame of {view.nbytes}")
    kind, rid, raw, sizes = decode_header(view[HEADER.size : HEADER.size + hlen])
    pos = HEADER.size + hlen
    if sum(sizes) != view.nbytes - pos:
        raise BadFrame(f"buffers of {sum(sizes)} bytes announced, {view.nbytes - pos} sent", rid)
    body = decode_body(kind, rid, raw)
    buffers: list[Buffer] = []
    for n in sizes:
        buffers.append(view[pos : pos + n])
        pos += n
    return Frame(kind, rid, body, buffers)


def frame_length(header: bytes) -> int:
    (length,) = HEADER.unpack(header)
    if length > MAX_FRAME_BYTES:
        raise FramingError(f"frame of {length} bytes exceeds the {MAX_FRAME_BYTES} limit")
    if length < HEADER.size:
        raise FramingError(f"frame of {length} bytes is shorter than its header length")
    return length


Source = socket.socket | io.BufferedReader  # a worker reads through a buffer: one recv for a small frame


def _recv_into(src: Source, buf: bytearray | memoryview, first: bool = False) -> bool:
    """Fill `buf` from the socket (or its buffered reader); False on a clean EOF before the first byte when `first`."""
    view = memoryview(buf)
    got, n = 0, view.nbytes
    read = src.recv_into if isinstance(src, socket.socket) else src.readinto
    while got < n:
        k = read(view[got:])
        if k == 0:
            if got == 0 and first:
                return False
            raise FramingError(f"connection closed mid-frame ({got}/{n} bytes)")
        got += k
    return True


def recv_exact(sock: Source, n: int) -> bytes | None:
    """Read exactly n bytes; None on a clean EOF before the first byte."""
    buf = bytearray(n)
    return bytes(buf) if _recv_into(sock, buf, first=True) else None


def recv_frame(sock: Source) -> Frame | None:
    """Blocking read of one frame (worker side); None when the peer closed.

    Each buffer is received into its own bytearray: writable, so torch views it as a
    tensor without a copy. A bad header or body is a BadFrame raised only after the
    whole frame is read, so the stream stays in sync.
    """
    head = bytearray(HEADER.size)
    if not _recv_into(sock, head, first=True):
        return None
    length = frame_length(bytes(head))
    hbuf = bytearray(HEADER.size)
    _recv_into(sock, hbuf)
    (hlen,) = HEADER.unpack(hbuf)
    if hlen > length - HEADER.size:
        raise FramingError(f"header of {hlen} bytes in a frame of {length}")
    header = bytearray(hlen)
    _recv_into(sock, header)
    rest = length - HEADER.size - hlen
    try:
        kind, rid, raw, sizes = decode_header(header)
        if sum(sizes) != rest:
            raise BadFrame(f"buffers of {sum(sizes)} bytes announced, {rest} sent", rid)
    except BadFrame:
        _discard(sock, rest)
        raise
    buffers: list[Buffer] = []
    for n in sizes:
        buf = bytearray(n)
        _recv_into(sock, buf)
        buffers.append(buf)
    return Frame(kind, rid, decode_body(kind, rid, raw), buffers)


def _discard(sock: Source, n: int) -> None:
    chunk = bytearray(min(n, 1 << 20))
    while n > 0:
        step = min(n, len(chunk))
        _recv_into(sock, memoryview(chunk)[:step])
        n -= step


def send_parts(sock: socket.socket, parts: Sequence[Buffer]) -> None:
    """Write a frame's pieces with gathered writes (no joining copy)."""
    views = [memoryview(p).cast("B") for p in parts if memoryview(p).nbytes]
    while views:
        sent = sock.sendmsg(views)
        while views and sent >= views[0].nbytes:
            sent -= views[0].nbytes
            views.pop(0)
        if sent:
            views[0] = views[0][sent:]


def tensor_meta(t: dict[str, Any]) -> TensorMeta:
    """The description part of a gateway tensor map {name, datatype, shape, data}."""
    return TensorMeta(name=t["name"], datatype=t["datatype"], shape=list(t["shape"]))


def tensor_maps(metas: Sequence[TensorMeta], buffers: Sequence[Buffer]) -> list[dict[str, Any]]:
    """Tensor maps {name, datatype, shape, data} of a reply; data are views of its buffers."""
    if len(metas) != len(buffers):
        raise ProtocolError(f"{len(metas)} tensors described, {len(buffers)} buffers sent")
    return [
        {"name": m.name, "datatype": m.datatype, "shape": list(m.shape), "data": b}
        for m, b in zip(metas, buffers, strict=True)
    ]


def tensor_to_wire(name: str, datatype: str, shape: tuple[int, ...] | list[int], data: Buffer) -> dict[str, Any]:
    """The gateway's tensor map {name, datatype, shape, data}: what OIP parsing yields and replies carry."""
    return {"name": name, "datatype": datatype, "shape": list(shape), "data": data}


def check_wire_tensor(obj: object) -> dict[str, Any]:
    """Validate the structure of a gateway tensor map."""
    if not (
        isinstance(obj, dict)
        and isinstance(obj.get("name"), str)
        and isinstance(obj.get("datatype"), str)
        and isinstance(obj.get("shape"), list)
        and all(isinstance(d, int) and d >= 0 for d in obj["shape"])
        and isinstance(obj.get("data"), bytes | bytearray | memoryview)
    ):
        raise ProtocolError("malformed tensor")
    return obj


def prepare_record(model_id: str, source: dict[str, Any], image: Any) -> Prepare:
    """PREPARE for a packed `shared.modelstore.ModelImage`: the model's source and where its image is."""
    entries = [(e.name, e.dtype, list(e.shape), e.offset, e.nbytes) for e in image.table.entries]
    table = TableWire(nbytes=image.table.nbytes, entries=entries)
    return Prepare(model_id=model_id, source=source, image=ImageWire(segment=image.segment_name, table=table))
