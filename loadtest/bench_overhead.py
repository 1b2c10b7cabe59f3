"""Serving overhead against a bare Starlette echo, and swap-in cost, measured side by side in one run.

    python -m loadtest.bench_overhead [--seconds 4] [--rounds 3] [--batch 32] [--swaps 6]

(a) Hot path. Starts a real `torpor serve` (one CPU device, `mlp` deployed) and a
    bare Starlette echo of the body (loadtest/echo.py), both under uvicorn with
    uvloop and httptools, and drives both with wrk and the same 64-float JSON body,
    alternating targets round by round: requests/s at 32 connections and p50 at one
    connection, the ratio and the added milliseconds, and the CPU each process spent
    per request (from /proc/<pid>/stat: a figure other load on the machine disturbs
    little). wrk is pinned to the last CPU; the servers may use every CPU.
(b) Swap-in time of resnet50 and bert-base (512 MiB device: they cannot both be
    resident, so alternating them swaps every time) vs a plain memory copy of the same bytes.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import orjson
import torch

from loadtest.loadgen import Run, Wrk, wrk_path
from loadtest.server import Server, free_port

VALUES = [round(0.01 * i, 2) for i in range(64)]
BODY = orjson.dumps({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": VALUES}]})


def start_echo(port: int) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "uvicorn", "loadtest.echo:app", "--port", str(port), "--log-level", "warning"]
    cmd += ["--loop", "uvloop", "--http", "httptools", "--no-access-log"]
    proc = subprocess.Popen(cmd, start_new_session=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.post(f"http://127.0.0.1:{port}/echo", content=BODY).content == BODY:
                return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("the echo server did not start")


def hot_path(args: argparse.Namespace, srv: Server) -> None:
    batch = {"max_batch_size": args.batch} if args.batch > 1 else {}
    r = srv.deploy("mlp", {"model": {"zoo": "mlp"}, "slo_ms": 1000, **batch})
    assert r.status_code == 201, r.text
    check = srv.client.post("/v1/functions/mlp/invoke", content=BODY)
    assert check.status_code == 200, check.text
    worker = srv.client.get("/v1/devices").json()["devices"][0]["pid"]
    port = free_port()
    echo = start_echo(port)
    wrk = Wrk(BODY, cpu=str(os.cpu_count() - 1) if (os.cpu_count() or 1) > 1 else None)
    targets = {
        "echo": (f"http://127.0.0.1:{port}/echo", {"server": echo.pid}),
        "torpor": (f"{srv.url}/v1/functions/mlp/invoke", {"server": srv.pid, "worker": worker}),
    }
    cells: dict[tuple[str, int], list[Run]] = {}
    try:
        for url, watch in targets.values():  # warm both: connections, caches, the batch profile
            wrk.run(url, args.connections, 1, watch)
        for _ in range(args.rounds):
            for conns in (args.connections, 1):
                for name, (url, watch) in targets.items():
                    cells.setdefault((name, conns), []).append(wrk.run(url, conns, args.seconds, watch))
    finally:
        wrk.close()
        echo.terminate()
        echo.wait()
    report(args, cells)


def report(args: argparse.Namespace, cells: dict[tuple[str, int], list[Run]]) -> None:
    loops = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    parsers = "httptools" if importlib.util.find_spec("httptools") else "h11"
    batching = f"dynamic batching up to {args.batch} (deploy max_batch_size)" if args.batch > 1 else "no batching"
    cpus = os.cpu_count() or 1
    print(f"(a) hot path: POST of one 64-float JSON body ({len(BODY)} bytes), wrk -t1 pinned to CPU {cpus - 1}")
    print(f"    torpor serve: 1 CPU device, mlp, {batching}; echo: bare Starlette; both uvicorn + {loops} + {parsers}")
    print(f"    {args.rounds} alternating rounds of {args.seconds:g} s per cell; medians over rounds; {cpus} CPUs")
    print(f"    {'target':<8}{'conns':>6}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}   CPU µs per request")
    for (name, conns), runs in sorted(cells.items(), key=lambda kv: (-kv[0][1], kv[0][0])):
        cpu = "  ".join(f"{p} {statistics.median(r.cpu_us_per_request(p) for r in runs):.0f}" for p in runs[0].cpu_s)
        rps, p50, p99 = (statistics.median(getattr(r, k) for r in runs) for k in ("rps", "p50_ms", "p99_ms"))
        print(f"    {name:<8}{conns:>6}{rps:>9.0f}{p50:>9.3f}{p99:>9.3f}   {cpu}")
    n = args.connections
    ratios = [t.rps / e.rps for t, e in zip(cells[("torpor", n)], cells[("echo", n)], strict=True)]
    added = [t.p50_ms - e.p50_ms for t, e in zip(cells[("torpor", 1)], cells[("echo", 1)], strict=True)]
    print(
        f"    torpor/echo req/s at {n} connections: {statistics.median(ratios):.2f}x "
        f"(rounds: {', '.join(f'{x:.2f}' for x in ratios)})"
    )
    cpu = {k: statistics.median(r.cpu_us_per_request("server") for r in cells[(k, n)]) for k in ("echo", "torpor")}
    print(
        f"    server CPU per request at {n} connections, echo/torpor: {cpu['echo'] / cpu['torpor']:.2f} "
        "(the req/s ratio to expect where each server's process has a core to itself)"
    )
    print(
        f"    added p50 at 1 connection: {statistics.median(added):+.3f} ms "
        f"(rounds: {', '.join(f'{x:+.3f}' for x in added)})"
    )


def in_process_mlp(n: int) -> list[float]:
    from shared import zoo

    model = zoo.build("mlp")
    x = torch.randn(1, 64)
    out = []
    with torch.inference_mode():
        for _ in range(n + 20):
            t0 = time.perf_counter()
            model(x)
            out.append((time.perf_counter() - t0) * 1e3)
    return out[20:]


def plain_copy_ms(nbytes: int, repeats: int = 5) -> float:
    """A single-threaded memcpy of `nbytes` into already-touched memory (as a warm arena is)."""
    src = torch.ones(nbytes, dtype=torch.uint8)
    dst = torch.zeros(nbytes, dtype=torch.uint8)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        dst.copy_(src)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def swap_in(args: argparse.Namespace, srv: Server) -> None:
    bodies = {
        "r50": {
            "inputs": [
                {"name": "input", "shape": [1, 3, 224, 224], "datatype": "FP32", "data": [0.1] * (3 * 224 * 224)}
            ]
        },
        "bert": {"inputs": [{"name": "input_ids", "shape": [1, 128], "datatype": "INT64", "data": [7] * 128}]},
    }
    sizes = {}
    for name, zoo_name in (("r50", "resnet50"), ("bert", "bert-base")):
        r = srv.deploy(name, {"model": {"zoo": zoo_name}, "slo_ms": 10_000})
        assert r.status_code == 201, r.text
        sizes[name] = r.json()["model_bytes"]
    swapped: dict[str, list[float]] = {n: [] for n in bodies}
    for _ in range(args.swaps):
        for n, body in bodies.items():
            r = srv.client.post(f"/v1/functions/{n}/invoke", json=body)
            assert r.status_code == 200, r.text
            if r.headers["x-torpor-cold"] == "1":
                swapped[n].append(float(r.headers["x-torpor-swap-ms"]))
    print("(b) swap-in (host shared memory -> device arena) vs plain memcpy of the same bytes")
    print(f"    {'model':<10}{'MiB':>8}{'swap ms (median)':>18}{'memcpy ms':>11}{'swap/memcpy':>13}{'GB/s':>7}")
    for name, label in (("r50", "resnet50"), ("bert", "bert-base")):
        swap_ms = statistics.median(swapped[name])
        copy_ms = plain_copy_ms(sizes[name])
        print(
            f"    {label:<10}{sizes[name] / 2**20:>8.1f}{swap_ms:>18.1f}{copy_ms:>11.1f}"
            f"{swap_ms / copy_ms:>13.2f}{sizes[name] / swap_ms / 1e6:>7.2f}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=4.0, help="length of each wrk run")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds over both targets")
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument(
        "--batch", type=int, default=32, help="mlp's max_batch_size (default: the connection count; 1: no batching)"
    )
    ap.add_argument("--swaps", type=int, default=6, help="swap-ins per model in (b); 0 skips (b)")
    args = ap.parse_args()
    wrk_path()  # fail with the install hint before starting anything
    torch.set_num_threads(1)  # the worker's compute threads on this server
    with tempfile.TemporaryDirectory() as tmp:
        srv = Server(Path(tmp) / "state", devices="cpu:1", memory="512MiB").start()
        try:
            hot_path(args, srv)
            native = np.percentile(np.asarray(in_process_mlp(500)), 50)
            print(f"    (mlp called in-process, batch 1: p50 {native:.3f} ms, part of any server's added time)")
            print()
            if args.swaps:
                swap_in(args, srv)
        finally:
            srv.stop()


if __name__ == "__main__":
    main()
