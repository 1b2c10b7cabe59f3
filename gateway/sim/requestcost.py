"""The server's own time per request of a model: everything but its queue, swap and execution.

`torpor profile` times it through a real `torpor serve` (CPU devices, the models deployed
and resident): the client's round trip of a POST of the body the load test sends, less the
queue, swap and execution times the server reports in its `x-torpor-*` headers. What is
left is what the simulator's `request_ms` stands for: the body crossing loopback TCP and
uvicorn, the JSON parse, the frame to the worker and back, the response's encoding.

An earlier version timed only the gateway's receive, parse and answer, in a uvicorn app
of their own: it left out the worker's side of the request, and beside executing
devices it measured a slowdown of 1.00-1.53x where a replay on the 2-core machine showed a
resnet50 request spending 45-53 ms outside its queue and execution with both devices
executing against 22 ms with none (2.1-2.4x, where 3 runnable threads on 2 cores would
give 1.5x): the 3 MB body crosses loopback TCP in dozens of turns between the client and
the gateway, and each waits for a core.

`measure(..., spread_runs=n)` times the request alone n times and gives its spread too: each
time over the median at every 5% (`request_quantiles`), as the profile gives an execution's.

`cold_penalty(model, nbytes)` times what a cold start adds to a request on a real server:
one CPU device with room for one copy of the model and two functions of it, requested in
turn, so each request of one evicts the other's copy and swaps its own in (cold), each
followed by a second request of the same function (warm); the median of cold less warm,
paired. It is the server's whole swap-in path, where `torpor profile`'s in-process pipeline
times only the copy beside the execution: on 2026-12-06 a cold resnet18 / resnet50 request
alone took 8 / 13 ms longer than a warm one on the server (replays of 96 functions), where
the in-process pipeline hid all but 1-2 ms of the copy.

`measure(..., beside=n)` also times the request while k = 1..n processes execute a model, as
k busy CPU devices do, alternating with the load paused; the median ratios are the model's
`request_slowdowns` (a request slows beside one execution already: the client and the
gateway are two threads, and the body's many loopback turns each wait for a core).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import numpy as np

from gateway.sim.profile import spread_quantiles
from shared.loadproc import LoadProcesses
from shared.specs import Body


class RequestCost(NamedTuple):
    ms: float  # the median request alone
    slowdowns: tuple[float, ...]  # beside 1, 2, ... processes executing
    quantiles: tuple[float, ...]  # a request alone over the median, at every 5% (empty if not asked)


def body_for(name: str, encoding: str = "json") -> Body:
    """The body the load test sends for a zoo model (loadtest/replay.py), in `encoding`."""
    from shared import zoo
    from shared.specs import request_body, specs_to_json

    return request_body(specs_to_json(zoo.entry(name).inputs), np.random.default_rng(0), encoding)


def measure(
    models: list[str],
    devices: int,
    memory: int,
    runs: int = 7,
    warmup: int = 2,
    beside: int = 0,
    threads: int = 1,
    spread_runs: int = 0,
    encoding: str = "json",
) -> dict[str, RequestCost]:
    """Per model, the median ms its request spends in the server outside queue, swap and execution
    (`devices` CPU devices of `memory` bytes each, enough for every model), its slowdowns beside
    1..`beside` processes executing the model on `threads` threads (none if `beside` is 0), and
    the spread of `spread_runs` requests alone (none if 0; the median is over them too); the
    bodies in `encoding`."""
    result = {}
    with serving({name: name for name in models}, devices, memory_arg(memory), threads, "request cost") as srv:
        for name in models:
            once = _timer(srv.client, name, body_for(name, encoding))
            alone = [once() for _ in range(warmup + max(runs, spread_runs))][warmup:]
            ms = statistics.median(alone)
            spread = spread_quantiles([t / max(ms, 1e-3) for t in alone]) if spread_runs else ()
            result[name] = RequestCost(ms, slowdowns(once, runs, beside, threads, name), spread)
    return result


def cold_penalty(model: str, nbytes: int, runs: int = 9, threads: int = 1, encoding: str = "json") -> float:
    """The median ms a cold request of `model` (its image `nbytes`) takes longer than a warm one,
    through a real server (see the module's docstring)."""
    body = body_for(model, encoding)
    # Room for one copy and not two (in bytes: a small model's image is well under a MiB).
    memory = str(nbytes + nbytes // 2)
    with serving({"a": model, "b": model}, 1, memory, threads, "cold cost") as srv:

        def timed(name: str, cold: bool) -> float:
            ms, r = _post(srv.client, name, body, f"cold cost of {model}")
            if (r.headers["x-torpor-cold"] == "1") != cold:
                raise RuntimeError(f"cold cost of {model}: expected a {'cold' if cold else 'warm'} request")
            return ms

        timed("b", cold=True)  # b resident: the first request of a is cold
        extra = []
        for i in range(runs + 1):
            name = "ab"[i % 2]  # each evicts the other's copy
            cold = timed(name, cold=True)
            warm = timed(name, cold=False)
            if i:  # the first pair warms the server's paths
                extra.append(cold - warm)
    return max(0.0, statistics.median(extra))


@contextmanager
def serving(functions: dict[str, str], devices: int, memory: str, threads: int, what: str) -> Iterator[Any]:
    """A real `torpor serve` on `devices` CPU devices of `memory` each, with `functions` (name ->
    zoo model) deployed; stopped on exit, however it ends."""
    from loadtest.server import Server  # a tool's dependency, imported only when measuring

    with tempfile.TemporaryDirectory(prefix="torpor-requestcost-") as tmp:
        srv = Server(Path(tmp) / "state", "--compute-threads", str(threads), devices=f"cpu:{devices}", memory=memory)
        try:
            srv.start()
            for name, model in functions.items():
                r = srv.deploy(name, {"model": {"zoo": model}, "slo_ms": 600_000})
                if r.status_code != 201:
                    raise RuntimeError(f"{what}: deploying {model}: {r.status_code} {r.text[:200]}")
            yield srv
        finally:
            if srv.proc is not None:  # started, or failed to become ready: stopped either way
                srv.stop()


def memory_arg(nbytes: int) -> str:
    return f"{-(-nbytes // (1 << 20))}MiB"


def _post(client: httpx.Client, name: str, body: Body, what: str) -> tuple[float, httpx.Response]:
    """(its round trip in ms, the answer) of one invoke of function `name`; anything but 200 raises."""
    t0 = time.perf_counter()
    r = client.post(f"/v1/functions/{name}/invoke", content=body.content, headers=body.headers)
    ms = (time.perf_counter() - t0) * 1e3
    if r.status_code != 200:
        raise RuntimeError(f"{what}: {r.status_code} {r.text[:200]}")
    return ms, r


def _timer(client: httpx.Client, name: str, body: Body) -> Callable[[], float]:
    def once() -> float:
        for _ in range(5):  # a cold request's swap overlaps its execution: time a warm one
            total, r = _post(client, name, body, f"request cost of {name}")
            if r.headers["x-torpor-cold"] == "0":
                h = r.headers
                served = float(h["x-torpor-queue-ms"]) + float(h["x-torpor-exec-ms"])
                return max(0.0, total - served)
        raise RuntimeError(f"request cost of {name}: the model did not stay resident")

    return once


def slowdowns(once: Callable[[], float], runs: int, beside: int, threads: int, model: str) -> tuple[float, ...]:
    """For k = 1..`beside`, the median ratio of `once` beside k processes executing `model` to
    `once` with them paused: paired, so the host's drift slows both alike."""
    slowdowns = []
    for k in range(1, beside + 1):
        ratios = []
        with LoadProcesses(k, threads, "model", model) as load:
            for _ in range(runs):
                load.pause()
                alone = once()
                load.resume()
                ratios.append(once() / max(alone, 1e-3))
        slowdowns.append(max(1.0, statistics.median(ratios)))
    return tuple(slowdowns)
