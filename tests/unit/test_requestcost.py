"""The request-cost app answers as the gateway's hot path does: parse, answer, refuse bad bodies."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from gateway.sim.requestcost import app, body_for


def post(path: str, body: bytes, chunk: int = 1 << 16) -> tuple[int, dict[str, Any]]:
    """One POST through the ASGI app, its body in `chunk`-byte receive messages as uvicorn sends it."""
    parts = [body[i : i + chunk] for i in range(0, len(body), chunk)] or [b""]
    messages = [{"type": "http.request", "body": p, "more_body": i < len(parts) - 1} for i, p in enumerate(parts)]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": path, "headers": []}
    asyncio.run(app(scope, receive, send))
    return sent[0]["status"], orjson.loads(sent[1]["body"])


def test_a_models_request_is_parsed_and_answered_with_its_outputs() -> None:
    status, answer = post("/mlp", body_for("mlp"))
    assert status == 200
    assert [o["name"] for o in answer["outputs"]] and answer["model_name"] == "mlp"


def test_a_body_the_gateway_refuses_is_refused_the_same_way() -> None:
    status, answer = post("/mlp", b'{"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32"}]}')
    assert status == 400 and "data" in answer["error"]
    status, answer = post("/no-such-model", b"{}")
    assert status == 404 and "unknown zoo model" in answer["error"]
