"""Open Inference Protocol cost: tritonclient binary vs JSON tensors vs a plain Starlette echo, in one run.

    python -m loadtest.bench_protocol [--seconds 4] [--clients 1 8 64]

Starts a real `torpor serve` (one CPU device) with the zoo `mlp`, and a minimal
Starlette app under uvicorn that returns the posted body, each in its own process.
For each concurrency, N threads (each with its own client) send requests back to
back for --seconds: (a) tritonclient.http infer with binary tensors, (b) the same
with JSON tensors, (c) a POST of the same binary request body to the echo, through
geventhttpclient, the HTTP client tritonclient.http is built on.
Prints req/s, p50 and p99 per cell and the ratios binary ÷ echo and binary ÷ JSON.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import tritonclient.http as triton
from geventhttpclient import HTTPClient

from loadtest.server import Server, free_port

ECHO_APP = """
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

async def echo(request: Request) -> Response:
    return Response(await request.body(), media_type="application/octet-stream")

app = Starlette(routes=[Route("/echo", echo, methods=["POST"])])
"""


def _drive(make: Callable[[], Callable[[], None]], clients: int, seconds: float) -> tuple[float, float, float]:
    """(req/s, p50 ms, p99 ms) of `clients` threads calling their own call() back to back.

    Each thread makes its own client (tritonclient.http runs on gevent, whose hub
    belongs to the thread that made it) and warms its connection before the clock starts.
    """
    latencies: list[list[float]] = [[] for _ in range(clients)]
    window: dict[str, float] = {}

    def start_clock() -> None:
        window["start"] = time.perf_counter()
        window["stop"] = window["start"] + seconds

    ready = threading.Barrier(clients, action=start_clock)

    def loop(i: int) -> None:
        call, out = make(), latencies[i]
        call()
        ready.wait()
        while time.perf_counter() < window["stop"]:
            t0 = time.perf_counter()
            call()
            out.append((time.perf_counter() - t0) * 1e3)

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - window["start"]
    flat = np.concatenate([np.asarray(x) for x in latencies])
    return flat.size / elapsed, float(np.percentile(flat, 50)), float(np.percentile(flat, 99))


def _triton(url: str, binary: bool) -> Callable[[], Callable[[], None]]:
    x = np.random.default_rng(0).standard_normal((1, 64)).astype(np.float32)

    def make() -> Callable[[], None]:
        client = triton.InferenceServerClient(url.removeprefix("http://"), connection_timeout=60, network_timeout=60)
        inp = triton.InferInput("input", [1, 64], "FP32")
        inp.set_data_from_numpy(x, binary_data=binary)
        out = triton.InferRequestedOutput("output", binary_data=binary)

        def call() -> None:
            client.infer("mlp", [inp], outputs=[out]).as_numpy("output")

        return call

    return make


def _echo(url: str) -> Callable[[], Callable[[], None]]:
    # The same bytes a binary tritonclient request carries: a JSON header plus the raw tensor.
    header = b'{"inputs":[{"name":"input","shape":[1,64],"datatype":"FP32","parameters":{"binary_data_size":256}}]}'
    body = header + np.zeros(64, np.float32).tobytes()

    def make() -> Callable[[], None]:
        # geventhttpclient: the HTTP client tritonclient.http itself runs on.
        client = HTTPClient.from_url(url, connection_timeout=60, network_timeout=60)

        def call() -> None:
            r = client.post("/echo", body=body)
            r.read()
            assert r.status_code == 200

        return call

    return make


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 8, 64])
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        srv = Server(Path(tmp) / "state", devices="cpu:1", memory="256MiB").start()
        port = free_port()
        app = Path(tmp) / "echo_app.py"
        app.write_text(ECHO_APP)
        echo = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "echo_app:app", "--port", str(port), "--log-level", "warning"],
            cwd=tmp,
            env={**os.environ, "PYTHONPATH": tmp},
        )
        try:
            assert srv.deploy("mlp", {"model": {"zoo": "mlp"}, "slo_ms": 1000}).status_code == 201
            echo_url = f"http://127.0.0.1:{port}"
            for _ in range(100):
                try:
                    httpx.post(f"{echo_url}/echo", content=b"x")
                    break
                except httpx.HTTPError:
                    time.sleep(0.1)
            print(f"mlp through torpor (1 CPU device) vs a Starlette echo; {args.seconds:g} s per cell; 2 cores")
            print(f"{'clients':>7} {'case':<16}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}")
            for n in args.clients:
                cells = {
                    "triton binary": _drive(_triton(srv.url, True), n, args.seconds),
                    "triton JSON": _drive(_triton(srv.url, False), n, args.seconds),
                    "starlette echo": _drive(_echo(echo_url), n, args.seconds),
                }
                for case, (rps, p50, p99) in cells.items():
                    print(f"{n:>7} {case:<16}{rps:>9.0f}{p50:>9.2f}{p99:>9.2f}")
                b, j, e = (cells[k][0] for k in ("triton binary", "triton JSON", "starlette echo"))
                print(f"{n:>7} {'ratios':<16}binary/echo {b / e:.2f}   binary/JSON {b / j:.2f}")
        finally:
            echo.terminate()
            echo.wait()
            srv.stop()


if __name__ == "__main__":
    main()
