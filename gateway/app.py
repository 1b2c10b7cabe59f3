"""The HTTP API (Starlette): functions, invocation (OIP JSON), health and metadata.

Every error leaves as {"error": "..."} JSON with the status of its TorporError;
anything unexpected is logged here and answered with a plain 500, never a traceback.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
from collections.abc import AsyncIterator
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway import oip
from gateway.registry import Function
from gateway.service import Service
from gateway.service import token_digest
from shared.errors import InvalidInput, Overloaded, PayloadTooLarge, TorporError, Unauthorized, Unavailable

log = logging.getLogger("torpor.gateway")


class JSON(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def _service(request: Request) -> Service:
    return request.app.state.service


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"body of {declared} bytes exceeds the {limit}-byte limit")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"body exceeds the {limit}-byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json(request: Request, limit: int) -> Any:
    body = await read_body(request, limit)
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"body: malformed JSON ({exc})") from exc


def check_admin(request: Request) -> None:
    """Deploy and delete need the admin token when the server has one."""
    token = _service(request).cfg.admin_token
    if token is not None and not _bearer_matches(request, token):
        raise Unauthorized("this operation needs 'Authorization: Bearer <admin token>'")


def check_invoke(request: Request, fn: Function) -> None:
    if fn.invoke_token_sha256 is None:
        return
    given = _bearer(request)
    if given is None or not hmac.compare_digest(token_digest(given), fn.invoke_token_sha256):
        raise Unauthorized(f"function {fn.name!r} needs 'Authorization: Bearer <invoke token>'")


def _bearer(request: Request) -> str | None:
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def _bearer_matches(request: Request, token: str) -> bool:
    given = _bearer(request)
    return given is not None and hmac.compare_digest(given.encode(), token.encode())


def describe(svc: Service, fn: Function) -> dict[str, Any]:
    public = fn.to_json()
    public["invoke_token"] = public.pop("invoke_token_sha256") is not None  # never the digest itself
    return {
        **public,
        "resident_on": svc.scheduler.residency(fn.model_id),
        "queue_depth": svc.scheduler.queue_depth(fn.name),
    }


# -- functions ---------------------------------------------------------------------
async def put_function(request: Request) -> Response:
    svc = _service(request)
    check_admin(request)
    body = await read_json(request, svc.cfg.max_body_bytes)
    fn, created = await svc.deploy(request.path_params["name"], body)
    return JSON(describe(svc, fn), status_code=201 if created else 200)


async def list_functions(request: Request) -> Response:
    svc = _service(request)
    return JSON({"functions": [describe(svc, f) for f in svc.registry.functions.values()]})


async def get_function(request: Request) -> Response:
    svc = _service(request)
    return JSON(describe(svc, svc.registry.get(request.path_params["name"])))


async def delete_function(request: Request) -> Response:
    svc = _service(request)
    check_admin(request)
    fn = await svc.remove(request.path_params["name"])
    return JSON({"deleted": fn.name})


async def list_devices(request: Request) -> Response:
    return JSON({"devices": await _service(request).device_stats()})


# -- inference -----------------------------------------------------------------------
async def invoke(request: Request) -> Response:
    svc = _service(request)
    name = request.path_params["name"]
    fn = svc.registry.get(name)
    check_invoke(request, fn)
    body = await read_body(request, svc.cfg.max_body_bytes)
    req = oip.parse_request(body, name, fn.inputs)
    if req.outputs is not None:
        known = {o.name for o in fn.outputs}
        bad = [w for w in req.outputs if w not in known]
        if bad:
            raise InvalidInput(f"outputs: unknown output {bad[0]!r}; the function returns {sorted(known)}")
    out = await svc.invoke(fn, req.inputs, req.timeout_s)
    payload = oip.response(name, req.id, out.outputs, req.outputs)
    headers = {
        "x-torpor-queue-ms": f"{out.queue_ms:.3f}",
        "x-torpor-swap-ms": f"{out.swap_ms:.3f}",
        "x-torpor-exec-ms": f"{out.exec_ms:.3f}",
        "x-torpor-device": str(out.device),
        "x-torpor-cold": "0" if out.source == "resident" else "1",
        "x-torpor-source": out.source,
    }
    return Response(payload, media_type="application/json", headers=headers)


# -- health and metadata (KServe v2) ------------------------------------------------
async def live(request: Request) -> Response:
    return JSON({"live": True})


async def ready(request: Request) -> Response:
    ok = _service(request).ready
    return JSON({"ready": ok}, status_code=200 if ok else 503)


async def model_metadata(request: Request) -> Response:
    svc = _service(request)
    fn = svc.registry.get(request.path_params["name"])
    return JSON(
        {
            "name": fn.name,
            "versions": ["1"],
            "platform": "pytorch_export" if "pt2" in fn.source else "torpor_zoo",
            "inputs": [s.to_json() for s in fn.inputs],
            "outputs": [s.to_json() for s in fn.outputs],
        }
    )


async def openapi(request: Request) -> Response:
    from gateway.openapi import document

    return JSON(document())


# -- errors ----------------------------------------------------------------------------
async def torpor_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, TorporError)
    headers = {"retry-after": "1"} if isinstance(exc, Overloaded | Unavailable) else None
    if isinstance(exc, Unauthorized):
        headers = {"www-authenticate": "Bearer"}
    return JSON({"error": exc.message}, status_code=exc.status, headers=headers)


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return JSON({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)


async def internal_error(request: Request, exc: Exception) -> Response:
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return JSON({"error": "internal server error"}, status_code=500)


def build_app(service: Service) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    routes = [
        Route("/v1/functions", list_functions, methods=["GET"]),
        Route("/v1/functions/{name}", put_function, methods=["PUT"]),
        Route("/v1/functions/{name}", get_function, methods=["GET"]),
        Route("/v1/functions/{name}", delete_function, methods=["DELETE"]),
        Route("/v1/functions/{name}/invoke", invoke, methods=["POST"]),
        Route("/v1/devices", list_devices, methods=["GET"]),
        Route("/v2/health/live", live, methods=["GET"]),
        Route("/v2/health/ready", ready, methods=["GET"]),
        Route("/v2/models/{name}", model_metadata, methods=["GET"]),
        Route("/v2/models/{name}/infer", invoke, methods=["POST"]),
        Route("/openapi.json", openapi, methods=["GET"]),
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={TorporError: torpor_error, HTTPException: http_error, Exception: internal_error},
    )
    app.state.service = service
    return app
