"""Serving overhead and swap-in cost, measured side by side in one run.

    python -m loadtest.bench_overhead [--requests 500] [--swaps 6]

Starts a real `torpor serve` (one CPU device, 512 MiB: resnet50 and bert-base
cannot both be resident, so alternating them swaps every time) and prints:
  (a) warm mlp latency through HTTP vs the same model called in-process;
  (b) swap-in time of resnet50 and bert-base vs a plain memory copy of the same bytes.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from loadtest.server import Server
from shared import zoo


def pct(xs: list[float], p: float) -> float:
    return float(np.percentile(np.asarray(xs), p))


def in_process_mlp(n: int) -> list[float]:
    model = zoo.build("mlp")
    x = torch.randn(1, 64)
    out = []
    with torch.inference_mode():
        for _ in range(n + 20):
            t0 = time.perf_counter()
            model(x)
            out.append((time.perf_counter() - t0) * 1e3)
    return out[20:]


def http_mlp(srv: Server, n: int) -> tuple[list[float], list[float]]:
    """Latency of invoking mlp, and of a no-op request on the same connection (the client's floor)."""
    body = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.5] * 64}]}
    invoke, noop = [], []
    for _ in range(n + 20):
        t0 = time.perf_counter()
        r = srv.client.post("/v1/functions/mlp/invoke", json=body)
        t1 = time.perf_counter()
        srv.client.get("/v2/health/live")
        t2 = time.perf_counter()
        invoke.append((t1 - t0) * 1e3)
        noop.append((t2 - t1) * 1e3)
        assert r.status_code == 200, r.text
    return invoke[20:], noop[20:]


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


def swaps(srv: Server, names: list[str], rounds: int) -> dict[str, list[float]]:
    bodies = {
        "r50": {
            "inputs": [
                {"name": "input", "shape": [1, 3, 224, 224], "datatype": "FP32", "data": [0.1] * (3 * 224 * 224)}
            ]
        },
        "bert": {"inputs": [{"name": "input_ids", "shape": [1, 128], "datatype": "INT64", "data": [7] * 128}]},
    }
    out: dict[str, list[float]] = {n: [] for n in names}
    for _ in range(rounds):
        for n in names:
            r = srv.client.post(f"/v1/functions/{n}/invoke", json=bodies[n])
            assert r.status_code == 200, r.text
            if r.headers["x-torpor-cold"] == "1":
                out[n].append(float(r.headers["x-torpor-swap-ms"]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=500)
    ap.add_argument("--swaps", type=int, default=6)
    args = ap.parse_args()
    torch.set_num_threads(1)  # the worker's compute threads on this server
    with tempfile.TemporaryDirectory() as tmp:
        srv = Server(Path(tmp) / "state", devices="cpu:1", memory="512MiB").start()
        try:
            sizes = {}
            for name, zoo_name in (("mlp", "mlp"), ("r50", "resnet50"), ("bert", "bert-base")):
                r = srv.deploy(name, {"model": {"zoo": zoo_name}, "slo_ms": 10_000})
                assert r.status_code == 201, r.text
                sizes[name] = r.json()["model_bytes"]
            http, noop = http_mlp(srv, args.requests)
            swapped = swaps(srv, ["r50", "bert"], args.swaps)
        finally:
            srv.stop()
    native = in_process_mlp(args.requests)
    print(f"(a) mlp warm latency, {args.requests} sequential requests, 1 client")
    print(f"    {'':<22}{'p50 ms':>10}{'p99 ms':>10}")
    print(f"    {'in-process call':<22}{pct(native, 50):>10.3f}{pct(native, 99):>10.3f}")
    print(f"    {'HTTP no-op (health)':<22}{pct(noop, 50):>10.3f}{pct(noop, 99):>10.3f}")
    print(f"    {'HTTP via torpor':<22}{pct(http, 50):>10.3f}{pct(http, 99):>10.3f}")
    print(
        f"    overhead: p50 +{pct(http, 50) - pct(native, 50):.3f} ms over in-process "
        f"(+{pct(http, 50) - pct(noop, 50):.3f} ms over an HTTP no-op); "
        f"HTTP/in-process p50 ratio {pct(http, 50) / pct(native, 50):.1f}x"
    )
    print()
    print("(b) swap-in (host shared memory -> device arena) vs plain memcpy of the same bytes")
    print(f"    {'model':<10}{'MiB':>8}{'swap ms (median)':>18}{'memcpy ms':>11}{'swap/memcpy':>13}{'GB/s':>7}")
    for name, label in (("r50", "resnet50"), ("bert", "bert-base")):
        swap_ms = statistics.median(swapped[name])
        copy_ms = plain_copy_ms(sizes[name])
        gbps = sizes[name] / swap_ms / 1e6
        print(
            f"    {label:<10}{sizes[name] / 2**20:>8.1f}{swap_ms:>18.1f}{copy_ms:>11.1f}"
            f"{swap_ms / copy_ms:>13.2f}{gbps:>7.2f}"
        )


if __name__ == "__main__":
    main()
