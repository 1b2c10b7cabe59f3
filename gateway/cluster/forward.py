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
        # A pooled keep-alive client: a new TCP connection per forward would cost more than the hop.
        self.client = httpx.AsyncClient(
            limits=httpx.Limits(max_connections=256, max_keepalive_connections=64), timeout=None
        )

    async def close(self) -> None:
        await self.client.aclose()

    def authentic(self, request: Request) -> bool:
        given = request.headers.get(TOKEN)
        return given is not None and hmac.compare_digest(given.encode(), self.token.encode())

    async def forward(self, request: Request, body: bytes, url: str, timeout_s: float) -> Response:
        headers = {k: v for k in _PASS_IN if (v := request.headers.get(k)) is not None}
        headers[FORWARDED_BY] = self.me
        headers[TOKEN] = self.token
        target = url + request.url.path + (f"?{request.url.query}" if request.url.query else "")
        try:
            r = await self.client.post(
                target, content=body, headers=headers, timeout=httpx.Timeout(timeout_s, connect=1.0)
            )
        except httpx.TimeoutException:
            raise
        except httpx.TransportError as exc:
            raise TargetLost(f"{url}: {exc!r}") from exc
        if r.status_code == 503 and r.headers.get(NOT_HELD):
            raise TargetLost(f"{url} no longer holds it")
        out = {k: v for k, v in r.headers.items() if k not in _HOP}
        out[FORWARDED_BY] = self.me
        return Response(r.content, status_code=r.status_code, headers=out)
