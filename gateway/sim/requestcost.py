"""The gateway's own time per request of a model, through the HTTP stack the server runs.

    python -m uvicorn gateway.sim.requestcost:app --port 8089   (started by `measure`)

`torpor profile` used to time the JSON parse and the response's encoding in its own
process. On the server a request also crosses uvicorn and loopback TCP: a ResNet's
3 MB JSON body arrives in dozens of receive events on the gateway's event loop and is
joined before it is parsed, and the client spends its own time sending it. In a
replay on the 2-core machine that part was as large as the parse itself (a resnet50
request took 55 ms beyond its queue and execution, against 25 ms timed in-process),
and the simulator, which left it out, predicted more functions within SLO than the
server had.

So the profile times a request the way the load test sends it: a POST of the same body
(one batch-1 input, free dimensions `FREE_DIM`) to a uvicorn process serving `app`,
which receives the body with the gateway's own `read_body`, parses it with
`oip.parse_request` and answers with `oip.response` of the model's outputs, as the hot
path does; the median round trip is the model's `request_ms`. What it leaves out: the
body's hop to the worker over a Unix socket (under a millisecond for 600 KB).

`measure(..., beside=n)` also times the request while n processes execute the model, as
n CPU devices do, alternating with the load paused; the median ratio is the model's
`request_slowdown`. A replay on the 2-core machine showed why processor sharing alone
does not predict it: with both devices executing, a resnet50 request took 45-53 ms
beyond its queue and execution against 22 ms with none (2.1-2.4x, where 3 runnable
threads on 2 cores would give 1.5x): the 3 MB body crosses loopback TCP in dozens of
turns between the client and the gateway, and each waits for a core.
"""

from __future__ import annotations

import functools
import socket
import statistics
import subprocess
import sys
import time
from typing import Any

import httpx
import numpy as np
import orjson

from gateway import oip
from gateway.invoke import JSON_TYPE, error_response, read_body, respond
from shared.errors import TorporError

BODY_LIMIT = 64 << 20


@functools.cache
def _model(name: str) -> tuple[Any, list[dict[str, Any]]]:
    """A zoo model's input specs and a response's outputs (random values of its output specs)."""
    from shared import zoo
    from shared.profiling import random_tensors

    entry = zoo.entry(name)
    outputs = [
        {"name": spec.name, "datatype": spec.datatype, "shape": list(t.shape), "data": t.numpy().tobytes()}
        for spec, t in zip(entry.outputs, random_tensors(entry.outputs, 1), strict=True)
    ]
    return entry.inputs, outputs


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """POST /<zoo model>: receive, parse and answer as the gateway's hot path does (no worker)."""
    if scope["type"] != "http":
        return
    name = scope["path"].strip("/")
    try:
        inputs, outputs = _model(name)
    except KeyError as exc:  # not a zoo model (the readiness probe asks for one that is not)
        await respond(send, 404, [JSON_TYPE], orjson.dumps({"error": exc.args[0]}))
        return
    try:
        body = await read_body(receive, BODY_LIMIT)
        req = oip.parse_request(body, name, inputs)
    except TorporError as exc:  # a body the gateway would refuse: refused the same way
        await respond(send, *error_response(exc))
        return
    payload, _ = oip.response(name, req.id, outputs, None)
    await respond(send, 200, [JSON_TYPE], payload)


def body_for(name: str) -> bytes:
    """The body the load test sends for a zoo model (loadtest/replay.py)."""
    from shared import zoo
    from shared.specs import request_body, specs_to_json

    return request_body(specs_to_json(zoo.entry(name).inputs), np.random.default_rng(0))


def measure(
    models: list[str], runs: int = 7, warmup: int = 2, beside: int = 0, threads: int = 1
) -> dict[str, tuple[float, float]]:
    """Per model, the median round trip (ms) of its request through a uvicorn process serving `app`,
    and its slowdown beside `beside` processes executing the model on `threads` threads (1.0 if none)."""
    from shared.loadproc import LoadProcesses

    with socket.socket() as s:  # a free port for the server
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    cmd = [sys.executable, "-m", "uvicorn", "gateway.sim.requestcost:app", "--port", str(port)]
    cmd += ["--log-level", "warning", "--no-access-log", "--lifespan", "off"]
    proc = subprocess.Popen(cmd, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(timeout=60) as client:
            _wait_ready(client, url, proc)
            result = {}
            for name in models:
                body = body_for(name)

                def once(name: str = name, body: bytes = body) -> float:
                    t0 = time.perf_counter()
                    r = client.post(f"{url}/{name}", content=body, headers={"content-type": "application/json"})
                    if r.status_code != 200:
                        raise RuntimeError(f"request cost of {name}: {r.status_code} {r.text[:200]}")
                    return (time.perf_counter() - t0) * 1e3

                times = [once() for _ in range(warmup + runs)][warmup:]
                slowdown = 1.0
                if beside:
                    # Paired with runs while the load is paused, so the host's drift slows both alike.
                    ratios = []
                    with LoadProcesses(beside, threads, "model", name) as load:
                        for _ in range(runs):
                            load.pause()
                            alone = once()
                            load.resume()
                            ratios.append(once() / alone)
                    slowdown = max(1.0, statistics.median(ratios))
                result[name] = (statistics.median(times), slowdown)
            return result
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_ready(client: httpx.Client, url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the request-cost server exited with {proc.returncode}")
        try:
            client.post(f"{url}/-", content=b"")
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError("the request-cost server did not start within 60 s")
