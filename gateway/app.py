"""The HTTP API (Starlette): functions, health and metadata; inference itself is gateway/invoke.py.

Every error leaves as {"error": "..."} JSON with the status of its TorporError;
anything unexpected is logged here and answered with a plain 500, never a traceback.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.invoke import HotPath, InvokeEndpoint, error_headers
from gateway.invoke import read_body as hot_read_body
from gateway.registry import Function
from gateway.service import Service
from shared.errors import (
    InvalidInput,
    NotFound,
    TorporError,
    Unauthorized,
)

log = logging.getLogger("torpor.gateway")
Endpoint = Callable[[Request], Awaitable[Response]]


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
    """The body of a Starlette request, by the hot path's reader (same limits, same errors)."""
    return await hot_read_body(request.receive, limit, request.headers.get("content-length"))


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
        "tier": svc.tiers.tier(fn),
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


def served_function(svc: Service, request: Request) -> Function:
    """The function a /v2/models path names; with /versions/{v}, only if that version is the one served."""
    return svc.registry.served(request.path_params["name"], request.path_params.get("version"))


async def model_ready(request: Request) -> Response:
    # Ready = loaded and servable; residency on a device is reported separately. Not ready is a
    # 400 as in KServe v2 ("4xx for false"); an unknown function or version is a 404.
    fn = served_function(_service(request), request)
    return JSON({"name": fn.name, "ready": fn.ready}, status_code=200 if fn.ready else 400)


async def model_metadata(request: Request) -> Response:
    fn = served_function(_service(request), request)
    return JSON(
        {
            "name": fn.name,
            "versions": fn.served_versions,
            "platform": "pytorch_export" if "pt2" in fn.source else "torpor_zoo",
            "inputs": [s.to_json() for s in fn.inputs],
            "outputs": [s.to_json() for s in fn.outputs],
        }
    )


# -- model repository (Triton's extension) -------------------------------------------
async def repository_index(request: Request) -> Response:
    """Every function with its state: READY, UNAVAILABLE (unloaded, with a reason), LOADING, UNLOADING."""
    svc = _service(request)
    body = await _optional_object(request, svc)
    only_ready = body.get("ready", False)
    if not isinstance(only_ready, bool):
        raise InvalidInput("ready: expected true (only models ready for inference) or false")
    unknown = sorted(set(body) - {"ready"})
    if unknown:
        raise InvalidInput(f"body: unknown field(s) {unknown}; expected 'ready'")
    entries = {
        fn.name: {"name": fn.name, "version": str(fn.version), "state": fn.state, "reason": fn.reason}
        for fn in svc.registry.functions.values()
    }
    for name, state in svc.transitions.items():
        entry = entries.setdefault(name, {"name": name, "reason": ""})  # a first deploy has no version yet
        entry["state"] = state
    listed = sorted(entries.values(), key=lambda e: e["name"])
    return JSON([e for e in listed if e["state"] == "READY"] if only_ready else listed)


async def repository_load(request: Request) -> Response:
    """Triton's load: with a config (parameters.config, a JSON string, or the deploy body itself) it
    deploys; without one it brings an unloaded function back from its saved config and model."""
    svc = _service(request)
    check_admin(request)
    name = request.path_params["name"]
    outer = await _optional_object(request, svc)
    config: Any = None
    params = outer.get("parameters", {})
    if "model" in outer:
        config = outer
    elif not isinstance(params, dict):
        raise InvalidInput('parameters: expected an object, e.g. {"config": "<deploy config as JSON>"}')
    else:
        unknown = sorted(set(params) - {"config"})
        if unknown:
            raise InvalidInput(
                f"parameters: {unknown} not supported (model files are not uploaded here); "
                "give the deploy config in parameters.config"
            )
        if sorted(set(outer) - {"parameters"}):
            raise InvalidInput(f"body: unknown field(s) {sorted(set(outer) - {'parameters'})}; expected 'parameters'")
        if "config" in params:
            config = params["config"]
            if isinstance(config, str):
                try:
                    config = orjson.loads(config)
                except orjson.JSONDecodeError as exc:
                    raise InvalidInput(f"parameters.config: malformed JSON ({exc})") from exc
    if config is not None:
        await _deployer(request).deploy(name, config)  # in a cluster: seen by every node
    elif name in svc.registry.functions:
        await svc.load(name)
    elif (cluster := getattr(request.app.state, "cluster", None)) is not None and name in cluster.policy.functions:
        await cluster.place_here(name)  # held by other nodes: a replica here, its image fetched from them
    else:
        raise NotFound(f"function {name!r} is not deployed; give its deploy config in parameters.config")
    return JSON({})


async def repository_unload(request: Request) -> Response:
    """Triton's unload: the function stays in the repository as UNAVAILABLE; a plain load brings it back."""
    svc = _service(request)
    check_admin(request)
    body = await _optional_object(request, svc)
    params = body.get("parameters", {})
    if not isinstance(params, dict) or not isinstance(params.get("unload_dependents", False), bool):
        raise InvalidInput("parameters: expected an object with an optional boolean 'unload_dependents'")
    await svc.unload(request.path_params["name"])
    return JSON({})


async def _optional_object(request: Request, svc: Service) -> dict[str, Any]:
    """A JSON object body that may be absent (Triton's clients send none, or an empty one)."""
    body = await read_body(request, svc.cfg.max_body_bytes)
    if not body.strip():
        return {}
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"body: malformed JSON ({exc})") from exc
    if not isinstance(obj, dict):
        raise InvalidInput("body: expected a JSON object")
    return obj


async def openapi(request: Request) -> Response:
    from gateway.openapi import document

    return JSON(document(admin=_service(request).cfg.admin_token is not None))


# -- errors ----------------------------------------------------------------------------
async def torpor_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, TorporError)
    return JSON({"error": exc.message}, status_code=exc.status, headers=error_headers(exc))


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return JSON({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)


async def internal_error(request: Request, exc: Exception) -> Response:
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return JSON({"error": "internal server error"}, status_code=500)


def _resource(path: str, **handlers: Endpoint) -> Route:
    """One route per path, so a 405 lists every method the path has in `Allow` (and HEAD with GET)."""

    async def endpoint(request: Request) -> Response:
        return await handlers["GET" if request.method == "HEAD" else request.method](request)

    return Route(path, endpoint, methods=list(handlers))


def build_app(service: Service, cluster: Any = None) -> HotPath:
    """The Starlette app behind the inference hot path (gateway/invoke.py).

    `cluster`: a gateway.cluster.node.ClusterNode when the node is one of many (its routes
    are matched first and it decides where each inference runs), else None.
    """
    endpoint = InvokeEndpoint()  # inference paths have POST only: their 405 says so

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
        _resource("/v1/functions", GET=list_functions),
        _resource("/v1/functions/{name}", PUT=put_function, GET=get_function, DELETE=delete_function),
        Route("/v1/functions/{name}/invoke", endpoint, methods=["POST"]),
        _resource("/v1/devices", GET=list_devices),
        _resource("/v2/health/live", GET=live),
        _resource("/v2/health/ready", GET=ready),
        _resource("/v2", GET=server_metadata),
        _resource("/v2/models/{name}", GET=model_metadata),
        _resource("/v2/models/{name}/versions/{version}", GET=model_metadata),
        _resource("/v2/models/{name}/ready", GET=model_ready),
        _resource("/v2/models/{name}/versions/{version}/ready", GET=model_ready),
        Route("/v2/models/{name}/infer", endpoint, methods=["POST"]),
        Route("/v2/models/{name}/versions/{version}/infer", endpoint, methods=["POST"]),
        _resource("/v2/repository/index", POST=repository_index),
        _resource("/v2/repository/models/{name}/load", POST=repository_load),
        _resource("/v2/repository/models/{name}/unload", POST=repository_unload),
        _resource("/openapi.json", GET=openapi),
        _resource("/metrics", GET=metrics),
    ]
    if cluster is not None:
        from gateway.cluster.routes import routes as cluster_routes

        routes = cluster_routes(endpoint) + routes  # matched first
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={TorporError: torpor_error, HTTPException: http_error, Exception: internal_error},
    )
    app.state.service = service
    app.state.cluster = cluster
    front = None
    if cluster is not None:
        from gateway.cluster.routes import front_for

        front = front_for(cluster)
    app.state.front = front
    return HotPath(service, app, front)
