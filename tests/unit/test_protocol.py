from __future__ import annotations

import socket
import threading

import msgspec
import pytest

from shared.errors import InvalidInput, ProtocolError, WorkerLost, from_wire
from shared.protocol import (
    HEADER,
    MAX_FRAME_BYTES,
    ONE_WAY,
    RECORD,
    REPLY,
    BadFrame,
    Error,
    Evict,
    Fill,
    Infer,
    Inferred,
    Kind,
    Load,
    Peer,
    Stats,
    StatsReply,
    TensorMeta,
    decode_payload,
    encode,
    encode_parts,
    recv_frame,
    send_parts,
)


def _pair() -> tuple[socket.socket, socket.socket]:
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)


def test_frame_roundtrip_keeps_raw_tensor_bytes_out_of_band() -> None:
    raw = bytes(range(256)) * 1000
    a, b = _pair()
    with a, b:
        body = Infer(model_id="m", inputs=[TensorMeta(name="x", datatype="FP32", shape=[1, 64000])])
        parts = encode_parts(body, 7, [memoryview(raw)])
        assert parts[1].obj is raw, "a tensor buffer is written from where it lies, not copied into the header"
        assert len(parts[0]) < 100, "tensor bytes never enter the msgpack header"
        # The frame is larger than the socket buffer: send from another thread.
        sender = threading.Thread(target=send_parts, args=(a, parts))
        sender.start()
        frame = recv_frame(b)
        sender.join()
    assert frame is not None
    assert frame.kind is Kind.INFER and frame.rid == 7 and frame.body == body
    (buf,) = frame.buffers
    assert isinstance(buf, bytearray) and buf == raw  # writable: torch views it without a copy


@pytest.mark.parametrize(
    "body",
    [
        Load(model_id="m@1", offset=4096, peer=Peer(device=1, offset=0)),
        Load(model_id="m@1", offset=0),
        Load(model_id="m@1", offset=0, follow=3, ready=8 << 20),
        Fill(follow=3, ready=16 << 20),
        Fill(follow=3, ready=0, error="holder a: chunk 2 fails its checksum"),
        Evict(model_id="m@1"),
        Stats(),
        Error(kind="invalid_input", message="bad"),
        Inferred(outputs=[TensorMeta(name="y", datatype="INT64", shape=[2, 0])], exec_ms=1.5, wait_ms=0.0),
        StatsReply(
            resident=[],
            prepared=0,
            busy_for_s=0.0,
            counters={"swaps": 1.0},
            backend="cpu",
            compute_threads=1,
            copy_threads=1,
        ),
    ],
)
def test_every_record_round_trips_as_its_kind(body: msgspec.Struct) -> None:
    frame = decode_payload(encode(body, 3)[HEADER.size :])
    assert frame.body == body and type(frame.body) is RECORD[frame.kind] and frame.rid == 3


def test_every_request_kind_has_a_reply_kind() -> None:
    requests = {k for k in Kind if 10 <= k < 20} - ONE_WAY
    assert set(REPLY) == requests and not ONE_WAY & set(REPLY) and all(RECORD[r] for r in REPLY.values())


def test_a_wrong_field_type_is_an_error_naming_the_field_and_the_request() -> None:
    header = msgspec.msgpack.encode((int(Kind.LOAD), 9, {"model_id": "m", "offset": "zero"}, []))
    with pytest.raises(BadFrame) as err:
        decode_payload(HEADER.pack(len(header)) + header)
    assert err.value.rid == 9 and "$.offset" in err.value.message and "LOAD" in err.value.message


def test_unknown_kinds_and_fields_are_errors() -> None:
    header = msgspec.msgpack.encode((99, 4, {}, []))
    with pytest.raises(BadFrame, match="unknown frame kind 99") as err:
        decode_payload(HEADER.pack(len(header)) + header)
    assert err.value.rid == 4
    header = msgspec.msgpack.encode((int(Kind.EVICT), 5, {"model_id": "m", "force": True}, []))
    with pytest.raises(BadFrame, match="force"):
        decode_payload(HEADER.pack(len(header)) + header)


def test_negative_shapes_and_buffer_size_mismatch_are_errors() -> None:
    header = msgspec.msgpack.encode(
        (int(Kind.INFER), 6, {"model_id": "m", "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1]}]}, [0])
    )
    with pytest.raises(BadFrame, match=r"inputs\[0\].shape"):
        decode_payload(HEADER.pack(len(header)) + header)
    good = encode(Infer(model_id="m", inputs=[]), 6, [b"abcd"])
    with pytest.raises(BadFrame, match="announced"):
        decode_payload(good[HEADER.size : -1])


def test_clean_eof_is_none_and_truncated_frame_is_an_error() -> None:
    a, b = _pair()
    a.close()
    assert recv_frame(b) is None
    b.close()
    a, b = _pair()
    data = encode(Stats(), 1, [b"xyz"])
    a.sendall(data[:-2])
    a.close()
    with pytest.raises(ProtocolError, match="mid-frame"):
        recv_frame(b)
    b.close()


def test_a_bad_body_is_skipped_whole_so_the_next_frame_still_reads() -> None:
    a, b = _pair()
    with a, b:
        header = msgspec.msgpack.encode((int(Kind.EVICT), 2, {"model_id": 5}, [3]))
        a.sendall(HEADER.pack(HEADER.size + len(header) + 3) + HEADER.pack(len(header)) + header + b"abc")
        a.sendall(encode(Stats(), 3))
        with pytest.raises(BadFrame, match="model_id"):
            recv_frame(b)
        frame = recv_frame(b)
    assert frame is not None and frame.kind is Kind.STATS and frame.rid == 3


def test_oversized_length_is_rejected_before_reading() -> None:
    a, b = _pair()
    with a, b:
        a.sendall(HEADER.pack(MAX_FRAME_BYTES + 1))
        with pytest.raises(ProtocolError, match="exceeds"):
            recv_frame(b)


@pytest.mark.parametrize("payload", [b"", b"\x00\x00", b"\x00\x00\x00\x09\x93", b"\x00\x00\x00\x01\xc1"])
def test_malformed_payloads_raise_protocol_error(payload: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode_payload(payload)


def test_errors_cross_the_wire_as_data() -> None:
    err = from_wire(InvalidInput("bad shape").to_wire())
    assert isinstance(err, InvalidInput) and err.message == "bad shape" and err.status == 400
    assert isinstance(from_wire(WorkerLost("gone").to_wire()), WorkerLost)
    assert isinstance(from_wire("nonsense"), ProtocolError)


def test_frames_read_through_a_buffer_as_the_worker_does() -> None:
    a, b = _pair()
    with a, b:
        big = bytes(range(256)) * 1024  # larger than the buffer: received in place
        data = encode(Stats(), 1) + encode(Stats(), 2, [big]) + encode(Stats(), 3, [b"xy"])
        # More than a socket buffer holds: send from another thread.
        sender = threading.Thread(target=lambda: (a.sendall(data), a.shutdown(socket.SHUT_WR)))
        sender.start()
        source = b.makefile("rb", buffering=64 << 10)
        frames = [recv_frame(source) for _ in range(4)]
        sender.join()
    assert [f.rid for f in frames if f is not None] == [1, 2, 3] and frames[3] is None
    assert frames[1] is not None and frames[1].buffers == [bytearray(big)]
    assert frames[2] is not None and frames[2].buffers == [bytearray(b"xy")]
