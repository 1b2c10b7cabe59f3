"""Forwarding a request to the node that should run it: once, authenticated, never in a loop.

The receiving node sees `x-torpor-forwarded-by` and the cluster token; a forwarded request is
never forwarded again (gateway/cluster/policy.py). The body is passed through untouched: the
node that runs it parses and validates it, so a bad request is refused exactly as it would be
locally.
"""

from __future__ import annotations

import hmac

import httpx
from starlette.requests import Request
from starlette.responses import Response

from gateway.cluster.peerhttp import PeerClient, PeerLost

FORWARDED_BY = "x-torpor-forwarded-by"
NODE = "x-torpor-node"
TOKEN = "x-torpor-cluster-token"
NOT_HELD = "x-torpor-not-held"  # the target does not hold the function (any more): try elsewhere
_PASS_IN = ("content-type", "inference-header-content-length", "authorization", "accept")
_HOP = {"content-length", "connection", "transfer-encoding", "keep-alive", "date", "server"}


class TargetLost(Exception):
    """The target could not be reached or did not hold the function: the caller may try once elsewhere."""


class Forwarder:
    def __init__(self, me: str, token: str) -> None:
        self.me = me
        self.token = token
        # Plain-http peers go through PeerClient (the hop's cost is the point); https peers and
        # streamed transfers through httpx.
        self.peers = PeerClient()
        self.client = httpx.AsyncClient(
            limits=httpx.Limits(max_connections=256, max_keepalive_connections=64), timeout=None
        )

    async def close(self) -> None:
        await self.peers.close()
        await self.client.aclose()

    def authentic(self, request: Request) -> bool:
        given = request.headers.get(TOKEN)
        return given is not None and hmac.compare_digest(given.encode(), self.token.encode())

    async def forward(self, request: Request, body: bytes, url: str, timeout_s: float) -> Response:
        headers = {k: v for k in _PASS_IN if (v := request.headers.get(k)) is not None}
        headers[FORWARDED_BY] = self.me
        headers[TOKEN] = self.token
        path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        if url.startswith("http://"):
            try:
                status, reply_headers, content = await self.peers.post(url, path, headers, body, timeout_s)
            except PeerLost as exc:
                raise TargetLost(f"{url}: {exc}") from exc
        else:  # https between nodes: the general client
            try:
                r = await self.client.post(
                    url + path, content=body, headers=headers, timeout=httpx.Timeout(timeout_s, connect=1.0)
                )
            except httpx.TimeoutException as exc:
                raise TimeoutError(str(exc)) from exc
            except httpx.TransportError as exc:
                raise TargetLost(f"{url}: {exc!r}") from exc
            status, reply_headers, content = r.status_code, list(r.headers.items()), r.content
        out = {k: v for k, v in reply_headers if k not in _HOP}
        if status == 503 and out.get(NOT_HELD):
            raise TargetLost(f"{url} no longer holds it")
        out[FORWARDED_BY] = self.me
        return Response(content, status_code=status, headers=out)
