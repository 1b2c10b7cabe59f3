"""The HTTP API (Starlette): functions, invocation (OIP JSON), health and metadata.

Every error leaves as {"error": "..."} JSON with the status of its TorporError;
anything unexpected is logged here and answered with a plain 500, never a traceback.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

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
    TorporError,
    Unauthorized,
    Unavailable,
    WorkerLost,
)

log = logging.getLogger("torpor.gateway")


class JSON(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def _service(request: Request) -> Service:
    return request.app.state.service


def _deployer(request: Request) -> Any:
    """Who deploys and deletes: the cluster node when in a cluster (every node sees it), else the service."""
    return request.app.state.cluster or request.app.state.service


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
    stats = svc.metrics.functions.get(fn.name)
    return {
        **public,
        "stats": stats.summary() if stats is not None else None,
        "resident_on": svc.scheduler.residency(fn.model_id),
        "queue_depth": svc.scheduler.queue_depth(fn.name),
        "schedule": svc.schedule_view(fn),
    }


# -- functions ---------------------------------------------------------------------
async def put_function(request: Request) -> Response:
    svc = _service(request)
    check_admin(request)
    body = await read_json(request, svc.cfg.max_body_bytes)
    fn, created = await _deployer(request).deploy(request.path_params["name"], body)
    return JSON(describe(svc, fn), status_code=201 if created else 200)


async def list_functions(request: Request) -> Response:
    svc = _service(request)
    return JSON({"functions": [describe(svc, f) for f in svc.registry.functions.values()]})


async def get_function(request: Request) -> Response:
    svc = _service(request)
    return JSON(describe(svc, svc.registry.get(request.path_params["name"])))


async def delete_function(request: Request) -> Response:
    check_admin(request)
    fn = await _deployer(request).remove(request.path_params["name"])
    return JSON({"deleted": fn.name})


async def list_devices(request: Request) -> Response:
    return JSON({"devices": await _service(request).device_stats()})


# -- inference -----------------------------------------------------------------------
async def invoke(request: Request) -> Response:
    svc = _service(request)
    name = request.path_params["name"]
    fn = svc.registry.get(name)
    started = time.perf_counter()
    try:
        response, out = await _invoke(request, svc, fn)
    except TorporError as exc:
        svc.metrics.request_done(
            name,
            _OUTCOMES.get(type(exc), "error" if exc.status >= 500 else "rejected"),
            time.perf_counter() - started,
            None,
        )
        raise
    svc.metrics.request_done(
        name, "ok", time.perf_counter() - started, (out.queue_ms / 1e3, out.swap_ms / 1e3, out.exec_ms / 1e3)
    )
    return response


_OUTCOMES: dict[type[TorporError], str] = {
    DroppedLate: "dropped",
    Overloaded: "overloaded",
    DeadlineExceeded: "deadline",
    WorkerLost: "worker_lost",
    Unauthorized: "unauthorized",
}


async def _invoke(request: Request, svc: Service, fn: Function) -> tuple[Response, Outcome]:
    name = fn.name
    check_invoke(request, fn)
    body = await read_body(request, svc.cfg.max_body_bytes)
    header_length = request.headers.get(oip.HEADER_LENGTH)
    if header_length is not None and not header_length.isdigit():
        raise InvalidInput(f"Inference-Header-Content-Length: expected a byte count, got {header_length!r}")
    req = oip.parse_request(body, name, fn.inputs, int(header_length) if header_length is not None else None)
    if req.outputs is not None:
        known = {o.name for o in fn.outputs}
        bad = [w for w in req.outputs if w not in known]
        if bad:
            raise InvalidInput(f"outputs: unknown output {bad[0]!r}; the function returns {sorted(known)}")
    out = await svc.invoke(fn, req.inputs, req.timeout_s)
    payload, json_length = oip.response(name, req.id, out.outputs, req.outputs, req.binary_outputs)
    headers = {
        "x-torpor-queue-ms": f"{out.queue_ms:.3f}",
        "x-torpor-swap-ms": f"{out.swap_ms:.3f}",
        "x-torpor-exec-ms": f"{out.exec_ms:.3f}",
        "x-torpor-device": str(out.device),
        "x-torpor-cold": "0" if out.source == "resident" else "1",
        "x-torpor-source": out.source,
        "x-torpor-batch": str(out.batch),
    }
    if json_length is not None:
        headers[oip.HEADER_LENGTH] = str(json_length)
        return Response(payload, media_type="application/octet-stream", headers=headers), out
    return Response(payload, media_type="application/json", headers=headers), out


async def metrics(request: Request) -> Response:
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    return Response(generate_latest(_service(request).metrics.registry), media_type=CONTENT_TYPE_LATEST)


# -- health and metadata (KServe v2) ------------------------------------------------
async def live(request: Request) -> Response:
    return JSON({"live": True})


async def ready(request: Request) -> Response:
    ok = _service(request).ready
    return JSON({"ready": ok}, status_code=200 if ok else 503)


async def server_metadata(request: Request) -> Response:
    from gateway import __version__

    return JSON({"name": "torpor", "version": __version__, "extensions": ["binary_tensor_data", "model_repository"]})


async def model_ready(request: Request) -> Response:
    # Ready = deployed and loadable; residency on a device is reported separately.
    name = request.path_params["name"]
    ok = name in _service(request).registry.functions
    return Response(status_code=200 if ok else 400)


async def repository_index(request: Request) -> Response:
    svc = _service(request)
    states = [{"name": n, "version": "1", "state": "READY", "reason": ""} for n in svc.registry.functions]
    states += [
        {"name": n, "version": "1", "state": st, "reason": ""}
        for n, st in svc.transitions.items()
        if n not in svc.registry.functions or st != "LOADING"
    ]
    return JSON(sorted(states, key=lambda x: x["name"]))


async def repository_load(request: Request) -> Response:
    """Triton's load: the deploy config rides in parameters.config (a JSON string) or as the body itself."""
    svc = _service(request)
    check_admin(request)
    name = request.path_params["name"]
    body = await read_body(request, svc.cfg.max_body_bytes)
    config: Any = None
    if body.strip():
        try:
            outer = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise InvalidInput(f"body: malformed JSON ({exc})") from exc
        params = outer.get("parameters") if isinstance(outer, dict) else None
        if isinstance(params, dict) and "config" in params:
            try:
                config = orjson.loads(params["config"]) if isinstance(params["config"], str) else params["config"]
            except orjson.JSONDecodeError as exc:
                raise InvalidInput(f"parameters.config: malformed JSON ({exc})") from exc
        elif isinstance(outer, dict) and "model" in outer:
            config = outer
    if config is None:
        if name in svc.registry.functions:
            return JSON({})  # already deployed: loadable on demand
        raise InvalidInput(f"model {name!r} is not deployed; give its deploy config in parameters.config")
    await _deployer(request).deploy(name, config)
    return JSON({})


async def repository_unload(request: Request) -> Response:
    check_admin(request)
    await _deployer(request).remove(request.path_params["name"])
    return JSON({})


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


def build_app(service: Service, cluster: Any = None) -> Starlette:
    """`cluster`: a gateway.cluster.node.ClusterNode when the node is one of many, else None."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await service.start()
        if cluster is not None:
            await cluster.start()
        try:
            yield
        finally:
            if cluster is not None:
                await cluster.stop()  # hands this node's images over before the workers go
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
        Route("/v2", server_metadata, methods=["GET"]),
        Route("/v2/models/{name}", model_metadata, methods=["GET"]),
        Route("/v2/models/{name}/versions/{version}", model_metadata, methods=["GET"]),
        Route("/v2/models/{name}/ready", model_ready, methods=["GET"]),
        Route("/v2/models/{name}/versions/{version}/ready", model_ready, methods=["GET"]),
        Route("/v2/models/{name}/infer", invoke, methods=["POST"]),
        Route("/v2/models/{name}/versions/{version}/infer", invoke, methods=["POST"]),
        Route("/v2/repository/index", repository_index, methods=["POST"]),
        Route("/v2/repository/models/{name}/load", repository_load, methods=["POST"]),
        Route("/v2/repository/models/{name}/unload", repository_unload, methods=["POST"]),
        Route("/openapi.json", openapi, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]
    if cluster is not None:
        from gateway.cluster.routes import routes as cluster_routes

        routes = cluster_routes() + routes  # matched first
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={TorporError: torpor_error, HTTPException: http_error, Exception: internal_error},
    )
    app.state.service = service
    app.state.cluster = cluster
    return app
