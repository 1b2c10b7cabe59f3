"""The gateway <-> worker wire protocol: length-prefixed msgpack frames.

A frame is a 4-byte big-endian length followed by a msgpack array
``[kind, request_id, body]``; ``kind`` is one byte (`Kind`), ``body`` a map.
Tensors travel as ``{"name", "datatype", "shape", "data": <raw bytes>}`` so no
payload is ever pickled and large tensors are not expanded into lists.
"""

from __future__ import annotations

import enum
import socket
import struct
from dataclasses import dataclass
from typing import Any

import msgpack

from shared.errors import ProtocolError


class FramingError(ProtocolError):
    """The byte stream itself is broken (bad length, cut short): no way to find the next frame."""


HEADER = struct.Struct(">I")
# Largest frame either side accepts; bigger lengths mean a corrupt stream.
MAX_FRAME_BYTES = 1 << 30


class Kind(enum.IntEnum):
    # worker -> gateway
    READY = 1  # first frame on a connection: the worker can serve
    OK = 2  # reply to the request with the same id
    ERROR = 3  # failed reply: body = {"kind", "message"}
    # gateway -> worker
    PREPARE = 10  # build the model's program skeleton (no weights)
    LOAD = 11  # copy a model's weights into the arena (swap in)
    EVICT = 12  # drop a resident model; its arena slice is free again
    INFER = 13  # run a resident (or loading) model on inputs
    STATS = 14  # report device statistics
    FORGET = 15  # release everything held for a removed model
    SHUTDOWN = 16  # finish and exit
    PEERS = 17  # the other devices' arena handles, for peer copies


@dataclass(frozen=True, slots=True)
class Frame:
    kind: Kind
    rid: int
    body: dict[str, Any]


def encode(kind: Kind, rid: int, body: dict[str, Any]) -> bytes:
    payload = msgpack.packb([int(kind), rid, body], use_bin_type=True)
    return HEADER.pack(len(payload)) + payload


def decode_payload(payload: bytes) -> Frame:
    try:
        obj = msgpack.unpackb(payload, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types
        raise ProtocolError(f"undecodable frame: {exc}") from exc
    if not (isinstance(obj, list) and len(obj) == 3):
        raise ProtocolError("frame is not [kind, id, body]")
    kind, rid, body = obj
    if not isinstance(rid, int) or not isinstance(body, dict):
        raise ProtocolError("frame id must be an int and body a map")
    try:
        return Frame(Kind(kind), rid, body)
    except ValueError as exc:
        raise ProtocolError(f"unknown frame kind {kind!r}") from exc


def frame_length(header: bytes) -> int:
    (length,) = HEADER.unpack(header)
    if length > MAX_FRAME_BYTES:
        raise FramingError(f"frame of {length} bytes exceeds the {MAX_FRAME_BYTES} limit")
    return length


def recv_exact(sock: socket.socket, n: int) -> bytes | None:
    """Read exactly n bytes; None on a clean EOF before the first byte."""
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if k == 0:
            if got == 0:
                return None
            raise FramingError(f"connection closed mid-frame ({got}/{n} bytes)")
        got += k
    return bytes(buf)


def recv_frame(sock: socket.socket) -> Frame | None:
    """Blocking read of one frame (worker side); None when the peer closed."""
    header = recv_exact(sock, HEADER.size)
    if header is None:
        return None
    length = frame_length(header)
    payload = recv_exact(sock, length) if length else b""
    if payload is None:
        raise FramingError("connection closed mid-frame")
    return decode_payload(payload)


def tensor_to_wire(name: str, datatype: str, shape: tuple[int, ...] | list[int], data: bytes) -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": list(shape), "data": data}


def check_wire_tensor(obj: object) -> dict[str, Any]:
    """Validate the structure of a tensor map that came off the wire."""
    if not (
        isinstance(obj, dict)
        and isinstance(obj.get("name"), str)
        and isinstance(obj.get("datatype"), str)
        and isinstance(obj.get("shape"), list)
        and all(isinstance(d, int) and d >= 0 for d in obj["shape"])
        and isinstance(obj.get("data"), bytes | bytearray)
    ):
        raise ProtocolError("malformed tensor in frame")
    return obj
