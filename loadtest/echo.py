"""The baseline the gateway's hot path is measured against: a bare Starlette app that returns the body.

    python -m uvicorn loadtest.echo:app --port 8081

It reads the whole request body and answers it back as JSON, through the same
Starlette routing and Response machinery any small Starlette service pays for.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


async def echo(request: Request) -> Response:
    return Response(await request.body(), media_type="application/json")


app = Starlette(routes=[Route("/echo", echo, methods=["POST"])])
