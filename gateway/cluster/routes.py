"""The cluster's HTTP surface: routing invocations, GET /v1/nodes, and node-to-node transfers.

These routes sit in front of the node's own (gateway/app.py): an invocation of a function held
here goes to the node's own handler; one held elsewhere is forwarded once. Reads of a function
held elsewhere are answered from the registry's definition.
"""

from __future__ import annotations

import asyncio
import functools
import time
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Route

from gateway import app as node_app
from gateway import invoke as hot
from gateway.cluster import imageserve, transfer
from gateway.cluster.forward import FORWARDED_BY, NODE, NOT_HELD, TargetLost
from gateway.cluster.node import ClusterNode
from gateway.cluster.policy import Forward, Local, NoHolder
from gateway.cluster.records import FunctionDef
from shared.errors import DeadlineExceeded, InvalidInput, NotFound, TorporError, Unauthorized, Unavailable


class NotHeld(Unavailable):
    """A forwarded request reached a node that does not hold the function."""


def _node(request: Request) -> ClusterNode:
    return request.app.state.cluster


def _check_peer(request: Request, node: ClusterNode) -> None:
    if not node.forwarder.authentic(request):
        raise Unauthorized("node-to-node calls need the cluster token (x-torpor-cluster-token)")


def front_for(node: ClusterNode) -> hot.Front:
    """The inference front of a cluster node (see gateway/invoke.py's HotPath)."""
    return functools.partial(invoke, node)


async def invoke(node: ClusterNode, name: str, version: str | None, scope: Any, receive: Any, send: Any) -> None:
    """An inference request on a cluster node: served here, or forwarded once to the best node."""
    try:
        await _route(node, name, version, scope, receive, send)
    except hot.ClientGone:
        return
    except TorporError as exc:
        await hot.respond(send, *hot.error_response(exc))


async def _route(node: ClusterNode, name: str, version: str | None, scope: Any, receive: Any, send: Any) -> None:
    request = Request(scope, receive)  # headers and URL only: the body is read through `receive`
    forwarded = FORWARDED_BY in request.headers
    if forwarded:
        _check_peer(request, node)
    route = node.policy.route(name, node.here_ms(name), forwarded)
    tried: set[str] = set()
    started = time.monotonic()
    body: bytes | None = None
    while True:
        if isinstance(route, Local):
            node.policy.ran_here(name)
            # A body read for a forward that failed over to here is handed over again.
            replay = receive if body is None else _replay(body)
            await hot.invoke(node.service, name, version, scope, replay, _with_header(send, NODE, node.name))
            return
        if isinstance(route, NoHolder):
            if forwarded:
                payload = orjson.dumps({"error": route.reason})
                await hot.respond(send, 503, [hot.JSON_TYPE, (NOT_HELD.encode(), b"1")], payload)
                return
            if name not in node.policy.functions:
                raise NotFound(f"function {name!r} is not deployed")
            raise Unavailable(route.reason)
        assert isinstance(route, Forward)
        if body is None:
            limit = node.service.cfg.max_body_bytes
            body = await hot.read_body(receive, limit, request.headers.get("content-length"))
        timeout_s = _timeout_s(node.policy.functions.get(name)) - (time.monotonic() - started)
        if timeout_s <= 0:
            raise DeadlineExceeded(f"function {name!r}: the deadline passed while finding a node for it")
        try:
            response = await node.forwarder.forward(request, body, route.url, timeout_s)
        except TargetLost:
            if tried:  # retried once already
                raise Unavailable(f"function {name!r}: the nodes it was sent to did not answer") from None
            tried.add(route.node)
            route = node.policy.failover(name, node.here_ms(name), tried)
            continue
        except Exception as exc:  # a timeout: the deadline is spent
            raise DeadlineExceeded(f"function {name!r}: no answer from node {route.node} in time") from exc
        await response(scope, receive, send)
        return


def _replay(body: bytes) -> Any:
    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


def _with_header(send: Any, key: str, value: str) -> Any:
    header = (key.encode(), value.encode())

    async def wrapped(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            message["headers"] = [*message.get("headers", ()), header]
        await send(message)

    return wrapped


def _timeout_s(fn: FunctionDef | None) -> float:
    return float(fn.spec.get("timeout_ms", 60_000)) / 1e3 if fn is not None else 60.0


async def nodes(request: Request) -> Response:
    node = _node(request)
    return node_app.JSON({"node": node.name, "nodes": node.nodes_view()})


def _remote(request: Request) -> FunctionDef | None:
    """The definition of a function this node does not hold, or None if it holds it."""
    node = _node(request)
    name = request.path_params["name"]
    if name in node.service.registry.functions:
        return None
    fn = node.policy.functions.get(name)
    if fn is None:
        raise NotFound(f"function {name!r} is not deployed")
    return fn


def describe_remote(node: ClusterNode, fn: FunctionDef) -> dict[str, Any]:
    return {
        "name": fn.name,
        "model": fn.spec["model"],
        "slo_ms": fn.slo_ms,
        "inputs": fn.inputs,
        "outputs": fn.outputs,
        "model_bytes": fn.model_bytes,
        "timeout_ms": fn.spec.get("timeout_ms", 60_000),
        "invoke_token": fn.invoke_token_sha256 is not None,
        "version": fn.version,
        "slo_percentile": fn.spec.get("slo_percentile", 98.0),
        "max_batch_size": fn.spec.get("max_batch_size", 1),
        "drop_late": fn.spec.get("drop_late", False),
        "heavy": fn.spec.get("heavy"),
        "stats": None,
        "resident_on": [],
        "queue_depth": 0,
        "schedule": None,
        "held_by": node.policy.live_holders(fn.name),
    }


async def get_function(request: Request) -> Response:
    fn = _remote(request)
    if fn is None:
        svc = _node(request).service
        out = node_app.describe(svc, svc.registry.get(request.path_params["name"]))
        out["held_by"] = _node(request).policy.live_holders(request.path_params["name"])
        fetched = _node(request).fetcher.reports.get(request.path_params["name"])
        if fetched is not None:
            out["image_fetch"] = fetched  # how its image came to this node: from which holders, how fast
        return node_app.JSON(out)
    return node_app.JSON(describe_remote(_node(request), fn))


async def list_functions(request: Request) -> Response:
    node = _node(request)
    svc = node.service
    out = [node_app.describe(svc, f) for f in svc.registry.functions.values()]
    elsewhere = sorted(n for n in node.policy.functions if n not in svc.registry.functions)
    out += [describe_remote(node, node.policy.functions[n]) for n in elsewhere]
    return node_app.JSON({"functions": out})


async def model_metadata(request: Request) -> Response:
    fn = _remote(request)
    if fn is None:
        return await node_app.model_metadata(request)
    platform = "pytorch_export" if fn.artifact_sha256 else "torpor_zoo"
    return node_app.JSON(
        {
            "name": fn.name,
            "versions": [str(fn.version)],
            "platform": platform,
            "inputs": fn.inputs,
            "outputs": fn.outputs,
        }
    )


async def model_ready(request: Request) -> Response:
    fn = _remote(request)
    if fn is None:
        return await node_app.model_ready(request)
    return node_app.JSON({"name": fn.name, "ready": True})  # held and served by another node


async def artifact(request: Request) -> Response:
    node = _node(request)
    _check_peer(request, node)
    sha = request.path_params["sha256"]
    if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise InvalidInput("sha256: expected 64 lowercase hex digits")
    path = await asyncio.to_thread(transfer.find_artifact, node.service.registry.artifacts, sha)
    if path is None:
        raise NotFound(f"no artifact {sha[:16]}... on node {node.name}")
    return FileResponse(path, media_type="application/octet-stream")


def routes(infer: Any) -> list[Route]:
    """Matched before the node's own routes (Starlette takes the first match); `infer`: the ASGI inference endpoint."""
    return [
        Route("/v1/nodes", nodes, methods=["GET"]),
        Route("/v1/functions", list_functions, methods=["GET"]),
        Route("/v1/functions/{name}", get_function, methods=["GET"]),
        Route("/v1/functions/{name}/invoke", infer, methods=["POST"]),
        Route("/v2/models/{name}", model_metadata, methods=["GET"]),
        Route("/v2/models/{name}/ready", model_ready, methods=["GET"]),
        Route("/v2/models/{name}/infer", infer, methods=["POST"]),
        Route("/v2/models/{name}/versions/{version}/infer", infer, methods=["POST"]),
        Route("/internal/v1/artifacts/{sha256}", artifact, methods=["GET"]),
        Route("/internal/v1/images/{model_id}", imageserve.header, methods=["GET"]),
        Route("/internal/v1/images/{model_id}/data", imageserve.data, methods=["GET"]),
    ]
