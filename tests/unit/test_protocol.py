from __future__ import annotations

import socket
import threading

import pytest

from shared.errors import InvalidInput, ProtocolError, WorkerLost, from_wire
from shared.protocol import HEADER, MAX_FRAME_BYTES, Kind, decode_payload, encode, recv_frame, tensor_to_wire


def _pair() -> tuple[socket.socket, socket.socket]:
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)


def test_frame_roundtrip_keeps_raw_tensor_bytes() -> None:
    raw = bytes(range(256)) * 1000
    a, b = _pair()
    with a, b:
        # The frame is larger than the socket buffer: send from another thread.
        data = encode(Kind.INFER, 7, {"inputs": [tensor_to_wire("x", "FP32", (1, 64000), raw)]})
        sender = threading.Thread(target=a.sendall, args=(data,))
        sender.start()
        frame = recv_frame(b)
        sender.join()
    assert frame is not None
    assert frame.kind is Kind.INFER and frame.rid == 7
    t = frame.body["inputs"][0]
    assert t["data"] == raw and t["shape"] == [1, 64000] and t["datatype"] == "FP32"


def test_clean_eof_is_none_and_truncated_frame_is_an_error() -> None:
    a, b = _pair()
    a.close()
    assert recv_frame(b) is None
    b.close()
    a, b = _pair()
    data = encode(Kind.STATS, 1, {"x": 1})
    a.sendall(data[:-2])
    a.close()
    with pytest.raises(ProtocolError, match="mid-frame"):
        recv_frame(b)
    b.close()


def test_oversized_length_is_rejected_before_reading() -> None:
    a, b = _pair()
    with a, b:
        a.sendall(HEADER.pack(MAX_FRAME_BYTES + 1))
        with pytest.raises(ProtocolError, match="exceeds"):
            recv_frame(b)


@pytest.mark.parametrize("payload", [b"\xc1", b"\x93\x01\x02", b"\x93\x63\x01\x80", b"\x93\x0b\xa1x\x80"])
def test_malformed_payloads_raise_protocol_error(payload: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode_payload(payload)


def test_errors_cross_the_wire_as_data() -> None:
    err = from_wire(InvalidInput("bad shape").to_wire())
    assert isinstance(err, InvalidInput) and err.message == "bad shape" and err.status == 400
    assert isinstance(from_wire(WorkerLost("gone").to_wire()), WorkerLost)
    assert isinstance(from_wire("nonsense"), ProtocolError)
