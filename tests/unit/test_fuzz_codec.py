"""Property-based tests of the untrusted-input edges: the frame codec, the worker's
frame reader and the gateway's OIP request validation.

Contracts under test:
  * frames round-trip exactly through a real socket;
  * `decode_payload` / `recv_frame` raise only ProtocolError, whatever the bytes, type
    every body as its kind's record, and
    never block once the writer has closed;
  * the worker's `_read` never crashes or wedges, and does what a reference model of
    the stream says: STATS answered, other frames queued in order, an ERROR (and go
    on) for a bad payload, an ERROR and None for lost framing, None at EOF;
  * `parse_request` raises only InvalidInput, and what it accepts is a well-formed wire
    tensor of exactly prod(shape) * itemsize bytes.
"""

from __future__ import annotations

import math
import queue
import random
import socket
import struct
import threading
from typing import Any
from unittest import mock

import msgpack
import msgspec
import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import shared.protocol as protocol
from gateway.oip import parse_request
from gpuworker.main import Connection, ControlLane, _read
from shared.errors import InvalidInput, ProtocolError
from shared.protocol import (
    HEADER,
    KIND_OF,
    MAX_FRAME_BYTES,
    RECORD,
    BadFrame,
    Error,
    Evict,
    Evicted,
    Forget,
    Frame,
    ImageWire,
    Infer,
    Kind,
    Load,
    Peer,
    Peers,
    Prepare,
    Record,
    Shutdown,
    Stats,
    StatsReply,
    TableWire,
    TensorMeta,
    check_wire_tensor,
    decode_payload,
    encode,
    recv_frame,
)
from shared.specs import DATATYPES, ITEMSIZE, TensorSpec

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SOCKET_TIMEOUT = 5.0
# Streams of arbitrary bytes are read with a small frame limit: with the real 1 GiB
# limit a random 4-byte header makes recv_exact allocate (and zero) up to 1 GiB per
# example. The code paths are the same; only the threshold moves.
SMALL_LIMIT = 1 << 16

# -- helpers -------------------------------------------------------------------


def _pair() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    a.settimeout(SOCKET_TIMEOUT)
    b.settimeout(SOCKET_TIMEOUT)
    return a, b


class _Feeder:
    """Writes bytes from a thread (frames may exceed the socket buffer), then half-closes."""

    def __init__(self, sock: socket.socket, data: bytes) -> None:
        self.error: BaseException | None = None
        self._sock = sock
        self._data = data
        self._thread = threading.Thread(target=self._run, name="feeder", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._sock.sendall(self._data)
            self._sock.shutdown(socket.SHUT_WR)
        except OSError as exc:  # the reader gave up early; reported by the test itself
            self.error = exc

    def join(self) -> None:
        self._thread.join(SOCKET_TIMEOUT * 2)
        assert not self._thread.is_alive(), "writer thread wedged"


def _same(a: Any, b: Any) -> bool:
    """Equality that also requires the same types (True is not 1) and float bits (-0.0)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return struct.pack(">d", a) == struct.pack(">d", b)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a == b


def _wire_inputs(result: Any) -> list[dict[str, Any]]:
    """parse_request's wire tensors, whether it returns a tuple or an InferRequest."""
    return result.inputs if hasattr(result, "inputs") else result[1]


# -- strategies ----------------------------------------------------------------

_text = st.text(st.characters(codec="utf-8"), max_size=16)
_mp_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | _text
    | st.binary(max_size=64)
)
_mp_values = st.recursive(
    _mp_scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_text, inner, max_size=4), max_leaves=16
)
_mp_bodies = st.dictionaries(_text, _mp_values, max_size=6)
# Some frames carry a large raw blob, as tensors do; the size matters, not the bytes.
# Sizes straddle the socket buffer (~200 KiB), so the sender must run concurrently.
_BLOBS = {n: random.Random(n).randbytes(n) for n in (1, 70_000, 600_000, 1_500_000)}
_blob_sizes = st.sampled_from([0, 0, 0, *_BLOBS])


_sizes = st.integers(0, 2**63 - 1)
_metas = st.builds(
    lambda n, d, sh: TensorMeta(name=n, datatype=d, shape=sh),
    _text,
    st.sampled_from(list(DATATYPES)),
    st.lists(st.integers(0, 2**31), max_size=4),
)
# One strategy per kind of record, with Any-typed fields (PREPARE's source, PEERS' handles)
# carrying arbitrary msgpack values.
_records = st.one_of(
    st.builds(lambda m, o: Load(model_id=m, offset=o), _text, _sizes),
    st.builds(
        lambda m, o, d, po: Load(model_id=m, offset=o, peer=Peer(device=d, offset=po)), _text, _sizes, _sizes, _sizes
    ),
    st.builds(lambda m: Evict(model_id=m), _text),
    st.builds(lambda m: Forget(model_id=m), _text),
    st.just(Stats()),
    st.just(Shutdown()),
    st.builds(lambda h: Peers(handles=h), _mp_bodies),
    st.builds(
        lambda m, src: Prepare(
            model_id=m, source=src, image=ImageWire(segment=m, table=TableWire(nbytes=0, entries=[]))
        ),
        _text,
        _mp_bodies,
    ),
    st.builds(lambda k, m: Error(kind=k, message=m), _text, _text),
    st.builds(
        lambda m, ins, outs: Infer(model_id=m, inputs=ins, output_names=outs),
        _text,
        st.lists(_metas, max_size=3),
        st.lists(_text, max_size=2),
    ),
)


@st.composite
def _frames(draw: st.DrawFn) -> tuple[Record, int, list[bytes]]:
    """A record, a request id and its out-of-band buffers (tensor bytes, some larger than a socket buffer)."""
    buffers = [_BLOBS[n] if n else b"" for n in draw(st.lists(_blob_sizes, max_size=2))]
    return draw(_records), draw(st.integers(0, 2**63 - 1)), buffers


def _header(n: int) -> bytes:
    return HEADER.pack(n)


def _framed(payload: bytes) -> bytes:
    return _header(len(payload)) + payload


# A stream is a mix of well-formed frames, well-framed garbage, lying headers and raw noise.
_segments = st.one_of(
    st.builds(encode, _records, st.integers(0, 2**63 - 1)),
    st.binary(max_size=64).map(_framed),  # framed, header length and header arbitrary
    _mp_values.map(lambda v: _framed(_header(len(p := msgpack.packb(v, use_bin_type=True))) + p)),  # wrong header
    st.builds(  # a well-formed header of any kind and any body: typed, or refused with the field named
        lambda k, r, b: _framed(_header(len(h := msgpack.packb([int(k), r, b, []]))) + h),
        st.sampled_from(Kind),
        st.integers(0, 2**63 - 1),
        _mp_bodies,
    ),
    st.builds(lambda n, p: _header(n) + p, st.integers(0, 256), st.binary(max_size=64)),  # length may lie
    st.integers(SMALL_LIMIT + 1, 2**32 - 1).map(_header),  # over the limit
    st.binary(max_size=32),  # raw noise
)
_streams = st.one_of(st.binary(max_size=512), st.lists(_segments, max_size=6).map(b"".join))


# -- codec -----------------------------------------------------------------------


@FUZZ
@given(st.lists(_frames(), min_size=1, max_size=3))
def test_frames_round_trip_through_a_socket(frames: list[tuple[Record, int, list[bytes]]]) -> None:
    a, b = _pair()
    with a, b:
        feeder = _Feeder(a, b"".join(encode(*f) for f in frames))
        try:
            got = [recv_frame(b) for _ in frames]
            tail = recv_frame(b)
        finally:
            b.shutdown(socket.SHUT_RDWR)
            feeder.join()
    assert feeder.error is None
    for (body, rid, buffers), frame in zip(frames, got, strict=True):
        assert isinstance(frame, Frame)
        assert frame.kind is KIND_OF[type(body)] and frame.rid == rid
        assert _same(msgspec.to_builtins(frame.body), msgspec.to_builtins(body))
        assert [bytes(b) for b in frame.buffers] == buffers
    assert tail is None  # a clean EOF after the last frame


@FUZZ
@given(st.binary(max_size=512) | st.builds(lambda v: msgpack.packb(v, use_bin_type=True), _mp_values))
def test_decode_payload_raises_only_protocol_error(payload: bytes) -> None:
    try:
        frame = decode_payload(payload)
    except ProtocolError:
        return
    assert isinstance(frame, Frame) and isinstance(frame.kind, Kind)
    assert isinstance(frame.rid, int) and type(frame.body) is RECORD[frame.kind]


def _drain(sock: socket.socket, limit: int) -> list[Frame | ProtocolError]:
    """recv_frame until EOF, going on after every ProtocolError (harsher than the worker)."""
    out: list[Frame | ProtocolError] = []
    for _ in range(limit):
        try:
            frame = recv_frame(sock)
        except ProtocolError as exc:
            out.append(exc)
            continue
        except TimeoutError:
            pytest.fail("recv_frame blocked although the writer had closed")
        if frame is None:
            return out
        assert isinstance(frame, Frame)
        out.append(frame)
    pytest.fail("recv_frame kept returning without consuming the stream")


@FUZZ
@given(_streams)
def test_recv_frame_on_arbitrary_streams_raises_only_protocol_error(stream: bytes) -> None:
    a, b = _pair()
    with a, b, mock.patch.object(protocol, "MAX_FRAME_BYTES", SMALL_LIMIT):
        feeder = _Feeder(a, stream)
        try:
            # Every call consumes >= 4 bytes or hits EOF, so this bounds a correct reader.
            _drain(b, len(stream) // HEADER.size + 2)
        finally:
            b.shutdown(socket.SHUT_RDWR)
            feeder.join()


def test_real_limit_is_enforced_on_the_header_alone() -> None:
    a, b = _pair()
    with a, b:
        a.sendall(_header(MAX_FRAME_BYTES + 1) + encode(Stats(), 1))
        with pytest.raises(ProtocolError, match="exceeds"):
            recv_frame(b)


# -- the worker's reader -----------------------------------------------------------


class _FakeExecutor:
    def __init__(self) -> None:
        self.stats_calls = 0
        self.loads: list[int] = []  # rids of LOAD frames the reader started itself

    def runs_inline(self, body: object) -> bool:
        return False  # every INFER goes to the work queue, where this test looks for it

    def load(self, rid: int, body: object) -> None:
        self.loads.append(rid)  # a real executor replies later, from its copy thread

    def evict(self, body: object) -> Evicted:
        return Evicted(evicted=False)

    def stats(self) -> StatsReply:
        self.stats_calls += 1
        return StatsReply(
            resident=[], prepared=0, busy_for_s=0.0, counters={}, backend="cpu", compute_threads=1, copy_threads=1
        )


def _run_reader(stream: bytes) -> tuple[list[Frame | None], list[Frame]]:
    """Feed `stream` to gpuworker.main._read; returns (work queue items, replies sent)."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    a.settimeout(SOCKET_TIMEOUT)  # the worker side stays blocking, as in the worker
    work: queue.Queue[Frame | None] = queue.Queue()
    executor = _FakeExecutor()
    replies: list[Frame] = []
    reply_errors: list[BaseException] = []

    def collect() -> None:
        try:
            while (frame := recv_frame(a)) is not None:
                replies.append(frame)
        except BaseException as exc:
            reply_errors.append(exc)

    with a, b:
        reader = threading.Thread(target=_read, args=(Connection(b), executor, work, ControlLane()), daemon=True)
        collector = threading.Thread(target=collect, daemon=True)
        collector.start()
        reader.start()
        feeder = _Feeder(a, stream)
        reader.join(SOCKET_TIMEOUT * 2)
        wedged = reader.is_alive()
        b.shutdown(socket.SHUT_RDWR)  # unblocks a wedged reader; EOF for the collector
        reader.join(SOCKET_TIMEOUT)
        feeder.join()
        collector.join(SOCKET_TIMEOUT * 2)
    assert not wedged, "_read did not finish although the gateway side had closed"
    assert not collector.is_alive() and not reply_errors, reply_errors
    items = []
    while not work.empty():
        items.append(work.get_nowait())
    assert executor.stats_calls == sum(1 for r in replies if r.kind is Kind.STATS_REPLY)
    return items, replies


def _expected_reader(stream: bytes) -> tuple[list[Frame | None], list[tuple[Kind, int]]]:
    """What _read should do with `stream`: (work queue items, (kind, rid) of replies)."""
    items: list[Frame | None] = []
    replies: list[tuple[Kind, int]] = []
    pos = 0
    control = 0  # control frames queued for the main thread (none is ever taken off here)
    while True:
        if pos == len(stream):
            return [*items, None], replies  # clean EOF
        if len(stream) - pos < HEADER.size:
            return [*items, None], [*replies, (Kind.ERROR, 0)]  # EOF inside the length
        (n,) = HEADER.unpack_from(stream, pos)
        pos += HEADER.size
        if n > SMALL_LIMIT or n < HEADER.size or len(stream) - pos < n:
            return [*items, None], [*replies, (Kind.ERROR, 0)]  # framing lost
        payload, pos = stream[pos : pos + n], pos + n
        (hlen,) = HEADER.unpack_from(payload, 0)
        if hlen > n - HEADER.size:
            return [*items, None], [*replies, (Kind.ERROR, 0)]  # the header length lies: framing lost
        try:
            frame = decode_payload(payload)
        except BadFrame as exc:
            replies.append((Kind.ERROR, exc.rid))  # still in sync: answer and go on
            continue
        if frame.kind is Kind.SHUTDOWN:
            return [*items, frame], replies
        if frame.kind is Kind.STATS:
            replies.append((Kind.STATS_REPLY, frame.rid))
        elif frame.kind in (Kind.LOAD, Kind.EVICT) and not control:
            if frame.kind is Kind.EVICT:  # handled by the reader itself: nothing queued overtaken
                replies.append((Kind.EVICTED, frame.rid))
        else:
            control += frame.kind is not Kind.INFER
            items.append(frame)


@FUZZ
@given(_streams)
def test_worker_reader_never_crashes_or_wedges(stream: bytes) -> None:
    with mock.patch.object(protocol, "MAX_FRAME_BYTES", SMALL_LIMIT):
        items, replies = _run_reader(stream)
    for r in replies:
        assert r.kind in (Kind.STATS_REPLY, Kind.ERROR, Kind.EVICTED)
        if r.kind is Kind.ERROR:
            assert isinstance(r.body, Error) and r.body.kind == "protocol_error" and r.body.message
    # Every frame is answered or queued, in order, and the reader ends by handing the
    # main loop None (connection done) or SHUTDOWN, exactly once.
    want_items, want_replies = _expected_reader(stream)
    assert [(r.kind, r.rid) for r in replies] == want_replies
    assert len(items) == len(want_items)
    for got, want in zip(items, want_items, strict=True):
        if want is None:
            assert got is None
        else:
            assert got is not None and (got.kind, got.rid) == (want.kind, want.rid) and got.body == want.body
            assert [bytes(b) for b in got.buffers] == [bytes(b) for b in want.buffers]


def test_worker_reader_answers_garbage_and_goes_on() -> None:
    stream = _framed(_header(1) + b"\xc1") + encode(Stats(), 5) + encode(Shutdown(), 6)
    items, replies = _run_reader(stream)
    assert [(r.kind, r.rid) for r in replies] == [(Kind.ERROR, 0), (Kind.STATS_REPLY, 5)]
    assert len(items) == 1 and items[0] is not None and items[0].kind is Kind.SHUTDOWN


def test_worker_reader_goes_on_after_a_header_that_is_not_a_frame_header() -> None:
    header = msgpack.packb(0)  # minimal: b"\x00", valid msgpack, not [kind, id, body, sizes]
    stream = _framed(_header(len(header)) + header) + encode(Stats(), 5)
    items, replies = _run_reader(stream)
    assert [(r.kind, r.rid) for r in replies] == [(Kind.ERROR, 0), (Kind.STATS_REPLY, 5)]
    assert items == [None]


def test_worker_reader_answers_a_wrong_field_type_to_its_request() -> None:
    header = msgpack.packb([int(Kind.LOAD), 8, {"model_id": "m", "offset": "zero"}, []])
    stream = _framed(_header(len(header)) + header) + encode(Stats(), 9)
    items, replies = _run_reader(stream)
    assert [(r.kind, r.rid) for r in replies] == [(Kind.ERROR, 8), (Kind.STATS_REPLY, 9)]
    assert "$.offset" in replies[0].body.message and items == [None]


# -- OIP request validation ---------------------------------------------------------

SIGNATURES: list[tuple[TensorSpec, ...]] = [
    (TensorSpec("x", "FP32", (-1, 4)),),
    (TensorSpec("ids", "INT64", (-1, -1)), TensorSpec("mask", "BOOL", (2,))),
    (TensorSpec("x", "FP32", (-1, 4)), TensorSpec("ids", "INT64", (-1, -1)), TensorSpec("mask", "BOOL", (2,))),
]
_signatures = st.sampled_from(SIGNATURES)
_names = st.sampled_from(["x", "ids", "mask"]) | _text

_json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | _text
)
_json = st.recursive(
    _json_scalars, lambda inner: st.lists(inner, max_size=5) | st.dictionaries(_text, inner, max_size=5), max_leaves=24
)
_numbers = st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False, allow_infinity=False) | st.booleans()
_data = st.recursive(st.lists(_numbers, max_size=10), lambda inner: st.lists(inner, max_size=4), max_leaves=40)
_dims = st.integers(0, 6) | st.integers(-3, -1) | st.booleans() | st.integers(2**31, 2**63)
_tensors = st.fixed_dictionaries(
    {},
    optional={
        "name": _names | _json,
        "datatype": st.sampled_from(list(DATATYPES)) | _json,
        "shape": st.lists(_dims, max_size=4) | _json,
        "data": _data | _json,
        "parameters": _json,
    },
)
_requests = st.fixed_dictionaries(
    {"inputs": st.lists(_tensors, max_size=4) | _json},
    optional={
        "id": _json,
        "outputs": st.lists(st.fixed_dictionaries({"name": _text | _json})) | _json,
        "parameters": st.fixed_dictionaries({}, optional={"timeout": _json}) | _json,
    },
)
_bodies = st.one_of(
    _requests.map(orjson.dumps), _json.map(orjson.dumps), st.binary(max_size=256), _text.map(str.encode)
)


def _check_accepted(result: Any, specs: tuple[TensorSpec, ...]) -> None:
    wire = _wire_inputs(result)
    assert [t["name"] for t in wire] == [s.name for s in specs]
    for t, spec in zip(wire, specs, strict=True):
        check_wire_tensor(t)
        assert t["datatype"] == spec.datatype and spec.accepts(tuple(t["shape"]))
        assert len(t["data"]) == math.prod(t["shape"]) * ITEMSIZE[spec.datatype]


def _parse_or_reject(body: bytes, specs: tuple[TensorSpec, ...]) -> Any:
    try:
        return parse_request(body, "f", specs)
    except InvalidInput:
        return None


@st.composite
def _near_valid(draw: st.DrawFn, specs: tuple[TensorSpec, ...]) -> bytes:
    """A request right in names and counts, with any numbers, then (maybe) one field broken."""
    tensors: list[dict[str, Any]] = []
    for spec in specs:
        shape = [d if d != -1 else draw(st.integers(0, 4)) for d in spec.shape]
        flat = draw(st.lists(_numbers, min_size=math.prod(shape), max_size=math.prod(shape)))
        values = _nest(flat, shape) if draw(st.booleans()) else flat
        tensors.append({"name": spec.name, "datatype": spec.datatype, "shape": shape, "data": values})
    mutation = draw(st.sampled_from(["none", "field", "drop", "duplicate", "extra"]))
    if mutation == "field":
        t = draw(st.sampled_from(tensors))
        key = draw(st.sampled_from(["name", "datatype", "shape", "data"]))
        junk = {"shape": st.lists(_dims, max_size=4), "data": _data}.get(key, st.nothing())
        if draw(st.booleans()):
            t.pop(key)
        else:
            t[key] = draw(junk | _json)
    elif mutation == "drop":
        tensors.pop(draw(st.integers(0, len(tensors) - 1)))
    elif mutation == "duplicate":
        tensors.append(dict(draw(st.sampled_from(tensors))))
    elif mutation == "extra":
        tensors.append(draw(_tensors))
    req: dict[str, Any] = {"inputs": draw(st.permutations(tensors))}
    req.update(draw(st.fixed_dictionaries({}, optional={"id": _json, "parameters": _json, "outputs": _json})))
    return orjson.dumps(req)


@FUZZ
@given(st.data(), _signatures)
def test_parse_request_raises_only_invalid_input(data: st.DataObject, specs: tuple[TensorSpec, ...]) -> None:
    body = data.draw(_bodies | _near_valid(specs), label="body")
    result = _parse_or_reject(body, specs)
    if result is not None:
        _check_accepted(result, specs)


def _nest(flat: list[Any], shape: list[int]) -> list[Any]:
    if len(shape) <= 1:
        return flat
    step = len(flat) // shape[0] if shape[0] else 0
    return [_nest(flat[i * step : (i + 1) * step], shape[1:]) for i in range(shape[0])]


_VALUES = {
    "FP32": st.floats(allow_nan=False, allow_infinity=False, width=32) | st.integers(-(2**24), 2**24),
    "INT64": st.integers(-(2**63), 2**63 - 1),
    "BOOL": st.booleans(),
}


@FUZZ
@given(st.data(), _signatures)
def test_parse_request_accepts_valid_requests(data: st.DataObject, specs: tuple[TensorSpec, ...]) -> None:
    tensors, expected = [], {}
    for spec in specs:
        shape = [d if d != -1 else data.draw(st.integers(0, 5)) for d in spec.shape]
        flat = data.draw(st.lists(_VALUES[spec.datatype], min_size=math.prod(shape), max_size=math.prod(shape)))
        values = _nest(flat, shape) if data.draw(st.booleans()) else flat
        tensors.append({"name": spec.name, "datatype": spec.datatype, "shape": shape, "data": values})
        expected[spec.name] = (shape, np.asarray(flat, dtype=np.float64 if spec.datatype == "FP32" else None))
    tensors = data.draw(st.permutations(tensors))
    body = orjson.dumps({"id": "r1", "inputs": tensors, "outputs": [{"name": "y"}]})
    result = parse_request(body, "f", specs)
    _check_accepted(result, specs)
    for t in _wire_inputs(result):
        shape, flat = expected[t["name"]]
        assert t["shape"] == shape
        got = np.frombuffer(t["data"], dtype=DATATYPES[t["datatype"]])
        want = flat.astype(DATATYPES[t["datatype"]]) if flat.size else np.empty(0, DATATYPES[t["datatype"]])
        assert np.array_equal(got, want)


def test_parse_request_rejects_fp32_overflow() -> None:
    too_big = 3.4028236e38  # just past float32's max; hypothesis first found 3447e89
    body = orjson.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [too_big, 0, 0, 0]}]})
    with pytest.raises(InvalidInput):
        parse_request(body, "f", SIGNATURES[0])


def test_a_request_id_that_is_not_a_string_is_refused() -> None:
    spec = (TensorSpec("x", "FP32", (-1,)),)
    body = orjson.dumps({"id": 7, "inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1.0]}]})
    with pytest.raises(InvalidInput, match="id: expected a string"):
        parse_request(body, "f", spec)


def test_worker_reader_answers_an_evict_itself_when_no_control_frame_waits() -> None:
    # The frame hypothesis found when the reader began taking EVICTs off the main thread:
    # an EVICT of an empty model id, answered EVICTED by the reader, nothing queued.
    stream = b"\x00\x00\x00\x13\x00\x00\x00\x0f\x94\x0c\x00\x81\xa8model_id\xa0\x90"
    items, replies = _run_reader(stream)
    assert [(r.kind, r.rid) for r in replies] == [(Kind.EVICTED, 0)]
    assert items == [None]
