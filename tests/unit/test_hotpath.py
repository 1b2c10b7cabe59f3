"""The inference hot path's pieces: routing, body reading, auth, errors, metric series, admission count."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import numpy as np
import orjson
import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gateway import oip
from gateway.dispatcher import Dispatcher, Invocation, Outcome
from gateway.invoke import ClientGone, check_token, error_response, read_body, route, server_timing
from gateway.metrics import BUCKETS, Buckets
from gateway.registry import Function
from gateway.scheduler import FunctionInfo, Scheduler
from gateway.service import token_digest
from loadtest.replay import server_timing as parse_server_timing
from shared.errors import (
    DeadlineExceeded,
    InvalidInput,
    Overloaded,
    PayloadTooLarge,
    ProtocolError,
    Unauthorized,
    Unavailable,
)
from shared.protocol import Frame, Inferred, Kind, Load, Loaded, TensorMeta
from shared.specs import TensorSpec


@pytest.mark.parametrize(
    ("path", "target"),
    [
        ("/v1/functions/mlp/invoke", ("mlp", None)),
        ("/v2/models/mlp/infer", ("mlp", None)),
        ("/v2/models/mlp/versions/1/infer", ("mlp", "1")),
        ("/v1/functions/mlp/invoke/", None),  # Starlette's: a trailing slash is another route
        ("/v1/functions//invoke", None),
        ("/v2/models/mlp/versions//infer", None),
        ("/v1/functions/mlp", None),
        ("/v2/models/mlp/ready", None),
        ("/v1/models/mlp/infer", None),
        ("/v2/functions/mlp/invoke", None),
        ("/x/v1/functions/mlp/invoke", None),
    ],
)
def test_route_matches_exactly_the_inference_paths(path: str, target: tuple[str, str | None] | None) -> None:
    assert route(path) == target


def _receiver(messages: list[dict[str, Any]]) -> Any:
    it = iter(messages)

    async def receive() -> dict[str, Any]:
        return next(it)

    return receive


def test_read_body_joins_chunks_and_enforces_the_limit() -> None:
    whole = [{"type": "http.request", "body": b"abc", "more_body": False}]
    assert asyncio.run(read_body(_receiver(whole), 3)) == b"abc"
    parts = [{"type": "http.request", "body": b"ab", "more_body": True}, {"type": "http.request", "body": b"cd"}]
    assert asyncio.run(read_body(_receiver(parts), 4)) == b"abcd"
    with pytest.raises(PayloadTooLarge, match="3-byte limit"):
        asyncio.run(read_body(_receiver(parts), 3))
    with pytest.raises(PayloadTooLarge):
        asyncio.run(read_body(_receiver(whole), 2))
    gone = [{"type": "http.request", "body": b"ab", "more_body": True}, {"type": "http.disconnect"}]
    with pytest.raises(ClientGone):
        asyncio.run(read_body(_receiver(gone), 10))


def test_invoke_token_is_checked_against_its_digest() -> None:
    fn = Function("f", {"zoo": "mlp"}, 100.0, (), (), 0, invoke_token_sha256=token_digest("s3cret"))
    check_token(fn, b"Bearer s3cret")
    check_token(fn, b"bearer  s3cret ")
    for bad in (None, b"", b"Bearer", b"Bearer wrong", b"Basic s3cret", b"s3cret"):
        with pytest.raises(Unauthorized, match="'f' needs"):
            check_token(fn, bad)


def test_error_responses_carry_status_json_and_retry_headers() -> None:
    status, headers, body = error_response(Overloaded("full"))
    assert (status, body) == (429, b'{"error":"full"}')
    assert (b"content-type", b"application/json") in headers and (b"retry-after", b"1") in headers
    status, headers, _ = error_response(Unauthorized("no"))
    assert status == 401 and (b"www-authenticate", b"Bearer") in headers


def test_buckets_export_what_a_prometheus_histogram_would() -> None:
    rng = random.Random(7)
    values = [*BUCKETS, 0.0, 1e-9, 1e9] + [rng.uniform(0, 70) ** rng.choice((1, 3)) / 1e3 for _ in range(500)]
    ours = Buckets()
    registry = CollectorRegistry()
    reference = Histogram("h", "h", buckets=BUCKETS, registry=registry)
    for v in values:
        ours.observe(v)
        reference.observe(v)
    want = {
        s.labels["le"]: s.value
        for fam in text_string_to_metric_families(generate_latest(registry).decode())
        for s in fam.samples
        if s.name == "h_bucket"
    }
    assert dict(ours.cumulative()) == want
    assert ours.sum == pytest.approx(sum(values))


class _Silent:
    """A worker client that never answers: runs stay in flight, so requests stay queued behind them."""

    def request(self, body: Any, buffers: Any = (), on_reply: Any = None) -> asyncio.Future[Any]:
        return asyncio.get_running_loop().create_future()

    async def call(self, body: Any, timeout: float | None = None) -> Any:
        return await self.request(body)


class _Pool:
    def client(self, index: int) -> _Silent:
        return _Silent()


async def _close(disp: Dispatcher) -> None:
    for task in list(disp._tasks):
        task.cancel()
    await asyncio.gather(*disp._tasks, return_exceptions=True)


def test_admission_count_tracks_the_scheduler_queues() -> None:
    async def scenario() -> None:
        sched = Scheduler([1 << 30], asyncio.get_running_loop().time)
        disp = Dispatcher(sched, _Pool())  # type: ignore[arg-type]
        for name in ("a", "b"):
            disp.function_added(FunctionInfo(name, f"m-{name}", 1 << 20, slo_ms=10_000, exec_ms=1.0))
        calls = [
            asyncio.create_task(disp.invoke(Invocation(name, [], ["y"], timeout)))
            for name, timeout in [("a", 5.0), ("a", 0.05), ("b", 0.05), ("b", 5.0), ("a", 5.0)]
        ]
        await asyncio.sleep(0)
        assert disp._queued == sched.queued() == 4  # the first runs, the rest wait
        await asyncio.sleep(0.2)  # two deadlines pass while queued
        assert disp._queued == sched.queued() == 2
        disp.function_removed("b")  # rejects b's waiting request
        await asyncio.sleep(0)
        assert disp._queued == sched.queued() == 1
        results = await asyncio.gather(*calls[1:4], return_exceptions=True)
        assert [type(r).__name__ for r in results] == ["DeadlineExceeded", "DeadlineExceeded", "NotFound"]
        for c in (calls[0], calls[4]):
            c.cancel()
        await _close(disp)

    asyncio.run(scenario())


def test_requests_waiting_for_an_unloaded_function_get_503_naming_the_load() -> None:
    async def scenario() -> None:
        sched = Scheduler([1 << 30], asyncio.get_running_loop().time)
        disp = Dispatcher(sched, _Pool())  # type: ignore[arg-type]
        disp.function_added(FunctionInfo("a", "m-a", 1 << 20, slo_ms=10_000, exec_ms=1.0))
        running = asyncio.create_task(disp.invoke(Invocation("a", [], ["y"], 5.0)))
        waiting = asyncio.create_task(disp.invoke(Invocation("a", [], ["y"], 5.0)))
        await asyncio.sleep(0)
        disp.function_removed("a", "unloaded")
        with pytest.raises(Unavailable, match="was unloaded while the request waited; load it with POST") as err:
            await waiting
        assert err.value.status == 503
        running.cancel()
        await _close(disp)

    asyncio.run(scenario())


def test_deadline_fires_without_wait_for() -> None:
    async def scenario() -> None:
        sched = Scheduler([1 << 30], asyncio.get_running_loop().time)
        disp = Dispatcher(sched, _Pool())  # type: ignore[arg-type]
        disp.function_added(FunctionInfo("a", "m-a", 1 << 20, slo_ms=10_000, exec_ms=1.0))
        with pytest.raises(DeadlineExceeded, match="while waiting for the model.s swap-in"):
            await disp.invoke(Invocation("a", [], ["y"], 0.02))
        with pytest.raises(DeadlineExceeded, match="a device \\(queued\\)"):
            await disp.invoke(Invocation("a", [], ["y"], 0.02))
        assert disp._queued == sched.queued() == 0
        await _close(disp)

    asyncio.run(scenario())


class _Manual:
    """A worker client whose INFER replies the test delivers as the frame reader does: on_reply, then the future."""

    def __init__(self) -> None:
        self.infers: list[tuple[asyncio.Future[Any], Any]] = []
        self.sent = asyncio.Event()

    async def next_infer(self) -> tuple[asyncio.Future[Any], Any]:
        await self.sent.wait()
        self.sent.clear()
        return self.infers.pop()

    def request(self, body: Any, buffers: Any = (), on_reply: Any = None) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if isinstance(body, Load):
            fut.set_result(Frame(Kind.LOADED, 0, Loaded(swap_ms=1.0, bytes=1, source="host")))
        else:
            self.infers.append((fut, on_reply))
            self.sent.set()
        return fut

    def client(self, index: int) -> _Manual:
        return self


def _reply(buffers: int = 1) -> Frame:
    out = Inferred(outputs=[TensorMeta(name="y", datatype="FP32", shape=[1])], exec_ms=0.5, wait_ms=0.0)
    return Frame(Kind.INFERRED, 0, out, [b"\0\0\0\0"] * buffers)


def test_a_resident_runs_reply_answers_its_request_as_it_is_read() -> None:
    async def scenario() -> None:
        worker = _Manual()
        disp = Dispatcher(Scheduler([1 << 30], asyncio.get_running_loop().time), worker)  # type: ignore[arg-type]
        disp.function_added(FunctionInfo("a", "m-a", 1 << 20, slo_ms=10_000, exec_ms=1.0))
        for expect_early in (False, True):  # cold (its swap is waited for), then resident
            inv = Invocation("a", [], ["y"], 5.0)
            call = asyncio.create_task(disp.invoke(inv))
            fut, on_reply = await worker.next_infer()
            assert (on_reply is not None) == expect_early
            frame = _reply()
            if on_reply is not None:
                on_reply(frame)
                assert inv.future.done()  # answered in the read callback, before any task resumes
            fut.set_result(frame)
            out = await call
            assert out.exec_ms == 0.5 and out.source == ("resident" if expect_early else "host")
        # A malformed reply answers nothing early; the run's task fails the request with the reason.
        inv = Invocation("a", [], ["y"], 5.0)
        call = asyncio.create_task(disp.invoke(inv))
        fut, on_reply = await worker.next_infer()
        bad = _reply(buffers=2)
        on_reply(bad)
        assert not inv.future.done()
        fut.set_result(bad)
        with pytest.raises(ProtocolError, match="1 tensors described, 2 buffers sent"):
            await call
        await _close(disp)

    asyncio.run(scenario())


@pytest.mark.parametrize(("datatype", "dtype"), [("FP16", "<f2"), ("FP32", "<f4"), ("FP64", "<f8")])
def test_flat_float_lists_pack_as_numpy_casts_them(datatype: str, dtype: str) -> None:
    rng = random.Random(3)
    big = float(np.finfo(dtype).max)
    edge = [0.0, -0.0, 1e-45, -1e-45, 5e-324, 6.1e-5, 1e-8, 1.0000001, big, -big, 65519.99, 3.4028235e38]
    edge = [v for v in edge if abs(v) <= big]
    values = edge + [rng.uniform(-1, 1) * 10 ** rng.randint(-40, 4) for _ in range(200)]
    spec = (TensorSpec("x", datatype, (-1,)),)
    body = orjson.dumps({"inputs": [{"name": "x", "datatype": datatype, "shape": [len(values)], "data": values}]})
    got = oip.parse_request(body, "f", spec).inputs[0]["data"]
    assert got == np.asarray(values).astype(dtype).tobytes()
    if datatype != "FP64":
        over = orjson.dumps({"inputs": [{"name": "x", "datatype": datatype, "shape": [2], "data": [0.5, big * 1.01]}]})
        with pytest.raises(InvalidInput, match=f"values do not fit {datatype}"):
            oip.parse_request(over, "f", spec)
    bools = orjson.dumps({"inputs": [{"name": "x", "datatype": datatype, "shape": [2], "data": [True, False]}]})
    with pytest.raises(InvalidInput, match="'b'-kind values"):
        oip.parse_request(bools, "f", spec)


def test_binary_tensors_are_views_of_the_body_not_copies() -> None:
    x = np.arange(64, dtype=np.float32).tobytes()
    header = orjson.dumps(
        {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "parameters": {"binary_data_size": 256}}]}
    )
    body = header + x
    spec = (TensorSpec("input", "FP32", (-1, 64)),)
    req = oip.parse_request(body, "mlp", spec, len(header))
    data = req.inputs[0]["data"]
    assert isinstance(data, memoryview) and data.obj is body, "sliced out of the body, not copied"
    assert bytes(data) == x


def test_server_timing_splits_the_gateways_time_and_parses_back() -> None:
    # Body from t=0 to 2 ms, parsed by 5, the worker answered at 40 (queue 1, exec 30: 4 ms of
    # dispatch), encoded by 41.5.
    out = Outcome([], 0, "resident", queue_ms=1.0, swap_ms=0.0, exec_ms=30.0)
    header = server_timing(out, 0.0, 0.002, 0.005, 0.040, 0.0415).decode()
    got = {k: float(v) for k, v in parse_server_timing(header).items()}
    assert got == pytest.approx(
        {"read": 2, "parse": 3, "queue": 1, "swap": 0, "exec": 30, "dispatch": 4, "encode": 1.5, "gateway": 41.5}
    )
    # Other servers' metrics and parameters (desc, no dur) are read without harm.
    assert parse_server_timing('cdn-cache;desc="HIT", db;dur=53.2;desc="query", miss') == {"db": "53.2"}
