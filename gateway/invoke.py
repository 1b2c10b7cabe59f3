"""The inference hot path as a plain ASGI app: invoke (v1) and infer (OIP v2) without Starlette's machinery.

Every inference request used to pay for Starlette's middleware layers, routing,
a Request object, header and Response objects; under load that was over half
the gateway's CPU. `HotPath` sits in front of the Starlette app: POSTs to

    /v1/functions/{name}/invoke
    /v2/models/{name}/infer
    /v2/models/{name}/versions/{version}/infer

are answered here, reading the ASGI messages and headers directly; every other
request goes to Starlette. The same `invoke` endpoint is also Starlette's route
for those paths, so a request that reaches Starlette (a mounted app with a root
path) is served by the same code, and other methods still get a 405.

Errors leave exactly as from the Starlette app: {"error": "..."} JSON with the
status of the TorporError; anything unexpected is logged and answered 500.
"""

from __future__ import annotations

import functools
import hmac
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

from gateway import oip
from gateway.dispatcher import Outcome
from gateway.registry import Function
from gateway.service import Service, token_digest
from shared.errors import (
    DeadlineExceeded,
    DroppedLate,
    InvalidInput,
    Overloaded,
    PayloadTooLarge,
    Shed,
    TorporError,
    Unauthorized,
    Unavailable,
    WorkerLost,
)

log = logging.getLogger("torpor.gateway")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_OUTCOMES: dict[type[TorporError], str] = {
    DroppedLate: "dropped",
    Shed: "shed",
    Overloaded: "overloaded",
    DeadlineExceeded: "deadline",
    WorkerLost: "worker_lost",
    Unauthorized: "unauthorized",
}
JSON_TYPE = (b"content-type", b"application/json")
_BINARY = (b"content-type", b"application/octet-stream")


class ClientGone(Exception):
    """The client disconnected before its body arrived: nothing to answer."""


def route(path: str) -> tuple[str, str | None] | None:
    """(function, version or None) a POST to `path` invokes, or None if it is not an inference path."""
    parts = path.split("/")
    n = len(parts)
    if n == 5 and parts[0] == "" and parts[3]:
        if (parts[1] == "v1" and parts[2] == "functions" and parts[4] == "invoke") or (
            parts[1] == "v2" and parts[2] == "models" and parts[4] == "infer"
        ):
            return parts[3], None
    elif n == 7 and parts[0] == "" and parts[1] == "v2" and parts[2] == "models" and parts[4] == "versions":
        if parts[3] and parts[5] and parts[6] == "infer":
            return parts[3], parts[5]
    return None


# Who answers an inference request: (function, version, scope, receive, send). A single node
# serves it itself (`invoke`); a cluster node first decides where it runs (gateway/cluster/routes.py).
Front = Callable[[str, "str | None", Scope, Receive, Send], Awaitable[None]]


class HotPath:
    """ASGI front: inference POSTs are served by `front` (default: `invoke`), everything else by `inner`."""

    def __init__(self, service: Service, inner: ASGIApp, front: Front | None = None) -> None:
        self.service = service
        self.inner = inner
        self.front = front or functools.partial(invoke, service)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and not scope.get("root_path"):
            target = route(scope["path"])
            if target is not None:
                await self.front(*target, scope, receive, send)
                return
        await self.inner(scope, receive, send)


class InvokeEndpoint:
    """The same endpoint as a Starlette route (ASGI app), for requests that reach Starlette."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = scope["app"].state
        front = getattr(state, "front", None) or functools.partial(invoke, state.service)
        params = scope["path_params"]
        await front(params["name"], params.get("version"), scope, receive, send)


async def invoke(svc: Service, name: str, version: str | None, scope: Scope, receive: Receive, send: Send) -> None:
    started = time.perf_counter()
    fn: Function | None = None
    done: tuple[str, float, tuple[float, float, float] | None] | None = None  # metrics, once answered
    try:
        fn = svc.registry.served(name, version)  # 404 for a version that is not served
        headers, payload, out = await _invoke(svc, fn, scope, receive)
        status = 200
        done = "ok", time.perf_counter() - started, (out.queue_ms / 1e3, out.swap_ms / 1e3, out.exec_ms / 1e3)
    except ClientGone:
        return
    except TorporError as exc:
        if fn is not None:  # an unknown name is not a function's request (and no unbounded label)
            outcome = _OUTCOMES.get(type(exc), "error" if exc.status >= 500 else "rejected")
            done = outcome, time.perf_counter() - started, None
        status, headers, payload = error_response(exc)
    except Exception as exc:
        log.error("unhandled error on POST %s", scope["path"], exc_info=exc)
        status, headers, payload = 500, [JSON_TYPE], b'{"error":"internal server error"}'
    await respond(send, status, headers, payload)
    if done is not None:  # after the answer is written: the client does not wait for the bookkeeping
        svc.metrics.request_done(name, *done)


async def respond(send: Send, status: int, headers: list[tuple[bytes, bytes]], payload: bytes) -> None:
    headers.append((b"content-length", b"%d" % len(payload)))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


async def _invoke(
    svc: Service, fn: Function, scope: Scope, receive: Receive
) -> tuple[list[tuple[bytes, bytes]], bytes, Outcome]:
    declared = authorization = header_length = None
    for key, value in scope["headers"]:
        if key == b"content-length":
            declared = value
        elif key == b"authorization":
            authorization = value
        elif key == b"inference-header-content-length":
            header_length = value
    if fn.invoke_token_sha256 is not None:
        check_token(fn, authorization)
    limit = svc.cfg.max_body_bytes
    t0 = time.perf_counter()
    body = await read_body(receive, limit, declared)
    t_read = time.perf_counter()
    if header_length is not None and not header_length.isdigit():
        raise InvalidInput(
            f"Inference-Header-Content-Length: expected a byte count, got {header_length.decode('latin-1')!r}"
        )
    req = oip.parse_request(body, fn.name, fn.inputs, int(header_length) if header_length is not None else None)
    if req.outputs is not None:
        known = {o.name for o in fn.outputs}
        bad = [w for w in req.outputs if w not in known]
        if bad:
            raise InvalidInput(f"outputs: unknown output {bad[0]!r}; the function returns {sorted(known)}")
    t_parsed = time.perf_counter()
    out = await svc.invoke(fn, req.inputs, req.timeout_s)
    t_served = time.perf_counter()
    payload, json_length = oip.response(
        fn.name, req.id, out.outputs, req.outputs, req.binary_outputs, version=str(fn.version)
    )
    t_encoded = time.perf_counter()
    headers = [
        _BINARY if json_length is not None else JSON_TYPE,
        (b"x-torpor-queue-ms", b"%.3f" % out.queue_ms),
        (b"x-torpor-swap-ms", b"%.3f" % out.swap_ms),
        (b"x-torpor-exec-ms", b"%.3f" % out.exec_ms),
        (b"x-torpor-device", b"%d" % out.device),
        (b"x-torpor-cold", b"0" if out.source == "resident" else b"1"),
        (b"x-torpor-source", out.source.encode()),
        (b"x-torpor-batch", b"%d" % out.batch),
        (b"server-timing", server_timing(out, t0, t_read, t_parsed, t_served, t_encoded)),
    ]
    if json_length is not None:
        headers.append((b"inference-header-content-length", b"%d" % json_length))
    return headers, payload, out


def server_timing(out: Outcome, t0: float, t_read: float, t_parsed: float, t_served: float, t_encoded: float) -> bytes:
    """The W3C Server-Timing header of an answered request: where its time in the gateway went, in ms.

    read: the body arriving; parse: decoding and checking it; queue, swap, exec: as the
    x-torpor-* headers; dispatch: the rest of the wait for the worker (frames crossing the
    socket, the worker's own handling); encode: the response's body; gateway: all of these,
    from the body's first byte to the answer ready. What a client measures beyond `gateway` is
    the request's headers and the answer crossing the connection, and the client itself.
    """
    waited = (t_served - t_parsed) * 1e3
    dispatch = max(0.0, waited - out.queue_ms - out.swap_ms - out.exec_ms)
    return (
        b"read;dur=%.3f, parse;dur=%.3f, queue;dur=%.3f, swap;dur=%.3f, exec;dur=%.3f, dispatch;dur=%.3f, "
        b"encode;dur=%.3f, gateway;dur=%.3f"
        % (
            (t_read - t0) * 1e3,
            (t_parsed - t_read) * 1e3,
            out.queue_ms,
            out.swap_ms,
            out.exec_ms,
            dispatch,
            (t_encoded - t_served) * 1e3,
            (t_encoded - t0) * 1e3,
        )
    )


async def read_body(receive: Receive, limit: int, declared: bytes | str | None = None) -> bytes:
    """The whole request body, refusing more than `limit` bytes; a single message is not copied.

    `declared`: the Content-Length header, so an announced oversized body is refused unread.
    """
    if declared is not None and declared.isdigit() and int(declared) > limit:
        shown = declared.decode() if isinstance(declared, bytes) else declared
        raise PayloadTooLarge(f"body of {shown} bytes exceeds the {limit}-byte limit")
    message = await receive()
    if message["type"] == "http.disconnect":
        raise ClientGone
    body: bytes = message.get("body", b"")
    if len(body) > limit:
        raise PayloadTooLarge(f"body exceeds the {limit}-byte limit")
    if not message.get("more_body", False):
        return body
    chunks, size = [body], len(body)
    while message.get("more_body", False):
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"body exceeds the {limit}-byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


def check_token(fn: Function, authorization: bytes | None) -> None:
    scheme, _, value = (authorization or b"").decode("latin-1").partition(" ")
    given = value.strip() if scheme.lower() == "bearer" else ""
    if not given or not hmac.compare_digest(token_digest(given), fn.invoke_token_sha256 or ""):
        raise Unauthorized(f"function {fn.name!r} needs 'Authorization: Bearer <invoke token>'")


def error_headers(exc: TorporError) -> dict[str, str] | None:
    if isinstance(exc, Unauthorized):
        return {"www-authenticate": "Bearer"}
    if isinstance(exc, Overloaded | Unavailable):
        return {"retry-after": "1"}
    return None


def error_response(exc: TorporError) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    headers = [JSON_TYPE, *((k.encode(), v.encode()) for k, v in (error_headers(exc) or {}).items())]
    return exc.status, headers, orjson.dumps({"error": exc.message})
