"""`make gpu-check`: verify the CUDA path on a GPU host in minutes, and write down what was measured.

    python -m gpuworker.gpucheck [--out gpu-check] [--models resnet50 bert-base] [--repeats 5]

On a host with a CUDA GPU it runs, in order:

1. the GPU tests (tests/gpu: pinned images, transfer stream, per-group events, IPC peers,
   serving end to end, profiling on the GPU), each one's outcome recorded;
2. the swap and pipeline benchmark with the worker's own executor on GPU 0: warm
   execution, swap then execute, pipelined swap-in, and a plain pinned host-to-device
   copy of the same bytes, with the ratios measured side by side;
3. the peer-copy benchmark on every ordered pair of GPUs: device-to-device GB/s and its
   ratio to the host-to-device GB/s of the target, with whether P2P access is enabled;

and writes `<out>/gpu-check.json` and `<out>/gpu-check.md`. On a host without a GPU it
says so and exits 0. Exits 1 when a GPU test fails.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

GB = 1e9


def gpu_tests(out: Path) -> list[dict[str, Any]]:
    """Run tests/gpu under pytest and read each test's outcome from its JUnit report."""
    xml = out / "gpu-tests.xml"
    cmd = [sys.executable, "-m", "pytest", "tests/gpu", "-q", "-p", "no:randomly", f"--junitxml={xml}"]
    subprocess.run(cmd, check=False)
    results = []
    for case in ET.parse(xml).getroot().iter("testcase"):
        outcome, detail = "passed", ""
        for tag in ("failure", "error", "skipped"):
            node = case.find(tag)
            if node is not None:
                outcome, detail = (
                    {"failure": "failed", "error": "error", "skipped": "skipped"}[tag],
                    node.get("message", ""),
                )
                break
        results.append(
            {"test": case.get("name"), "outcome": outcome, "seconds": float(case.get("time", 0)), "detail": detail}
        )
    return results


def swap_bench(models: list[str], repeats: int, group_bytes: int) -> list[dict[str, Any]]:
    """The worker's executor on GPU 0: warm, swap+exec, pipelined, and a plain pinned copy."""
    from gpuworker.backends.cuda import CudaBackend
    from gpuworker.bench_swap import Bench
    from gpuworker.config import WorkerConfig

    backend = CudaBackend(WorkerConfig(0, "cuda", 0, 2 << 30, "", None, (), 1, group_bytes))
    bench = Bench(backend, group_bytes)
    rows = []
    try:
        for name in models:
            r = bench.measure(name, repeats)
            rows.append(
                {
                    "model": name,
                    "mib": r["bytes"] / 2**20,
                    "warm_ms": r["warm"],
                    "swap_then_exec_ms": r["serial"],
                    "pipelined_ms": r["piped"],
                    "pinned_copy_ms": r["memcpy"],
                    "swap_ms": r["swap"],
                    "swap_gbps": r["bytes"] / (r["swap"] / 1e3) / GB,
                    "swap_bw_over_copy_bw": r["memcpy"] / r["swap"],
                    "pipelined_over_max_copy_warm": r["piped"] / max(r["memcpy"], r["warm"]),
                    "pipelined_over_serial": r["piped"] / r["serial"],
                }
            )
    finally:
        bench.close()
    return rows


def _best_copy_gbps(dst: Any, src: Any, runs: int = 3) -> float:
    import torch

    best = 0.0
    for _ in range(runs):
        torch.cuda.synchronize(src.device)
        if dst.device.type == "cuda":
            torch.cuda.synchronize(dst.device)
        t0 = time.perf_counter()
        dst.copy_(src)
        for d in {src.device, dst.device}:
            if d.type == "cuda":
                torch.cuda.synchronize(d)
        best = max(best, src.numel() / (time.perf_counter() - t0) / GB)
    return best


def peer_bench(nbytes: int = 256 << 20) -> list[dict[str, Any]]:
    """Device-to-device copy GB/s for every ordered pair, beside the target's pinned host-to-device GB/s."""
    import torch

    n = torch.cuda.device_count()
    if n < 2:
        return []
    host = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
    bufs = [torch.empty(nbytes, dtype=torch.uint8, device=f"cuda:{i}") for i in range(n)]
    host_gbps = [_best_copy_gbps(bufs[i], host) for i in range(n)]
    rows = []
    for a in range(n):
        for b in range(n):
            if a != b:
                gbps = _best_copy_gbps(bufs[b], bufs[a])
                rows.append(
                    {
                        "source": a,
                        "target": b,
                        "p2p_access": bool(torch.cuda.can_device_access_peer(b, a)),
                        "peer_gbps": gbps,
                        "host_gbps_of_target": host_gbps[b],
                        "peer_over_host": gbps / host_gbps[b],
                    }
                )
    return rows


def host_facts() -> dict[str, Any]:
    import torch

    from gpuworker.backends.topology import gpu_report

    gpus = []
    for i in range(torch.cuda.device_count()):
        report = gpu_report(i)
        gpus.append({"index": i, "name": torch.cuda.get_device_name(i), **report})
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "gpus": gpus,
        "when": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def markdown(report: dict[str, Any]) -> str:
    lines = ["# torpor GPU check", ""]
    h = report["host"]
    lines += [f"torch {h['torch']} (CUDA {h['cuda']}), Python {h['python']}, {h['when']}", ""]
    for g in h["gpus"]:
        links = ", ".join(f"GPU {k}: {v['pcie']}, {v['nvlinks']} NVLink" for k, v in g["links"].items()) or "none"
        lines.append(f"* GPU {g['index']}: {g['name']}, {g['total_bytes'] / 2**30:.1f} GiB; links: {links}")
    t = report["tests"]
    counts = {o: sum(r["outcome"] == o for r in t) for o in ("passed", "failed", "error", "skipped")}
    lines += ["", "## GPU tests", "", ", ".join(f"{v} {k}" for k, v in counts.items()), ""]
    lines += ["| test | outcome | s | detail |", "| --- | --- | ---: | --- |"]
    lines += [f"| {r['test']} | {r['outcome']} | {r['seconds']:.1f} | {r['detail'][:80]} |" for r in t]
    lines += ["", "## Swap and pipeline (GPU 0, the worker's executor; times in ms, median)", ""]
    lines += [
        "| model | MiB | warm | swap+exec | pipelined | pinned copy | swap | swap GB/s | swapBW/copyBW "
        "| piped/max(copy,warm) | piped/serial |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in report["swap"]:
        lines.append(
            f"| {r['model']} | {r['mib']:.1f} | {r['warm_ms']:.2f} | {r['swap_then_exec_ms']:.2f} | "
            f"{r['pipelined_ms']:.2f} | {r['pinned_copy_ms']:.2f} | {r['swap_ms']:.2f} | {r['swap_gbps']:.1f} | "
            f"{r['swap_bw_over_copy_bw']:.2f} | {r['pipelined_over_max_copy_warm']:.2f} | "
            f"{r['pipelined_over_serial']:.2f} |"
        )
    lines += ["", "## Peer copies", ""]
    if not report["peer"]:
        lines.append("One GPU: no peer copies to measure.")
    else:
        lines += [
            "| from | to | P2P | peer GB/s | host GB/s (target) | peer/host |",
            "| ---: | ---: | --- | ---: | ---: | ---: |",
        ]
        for r in report["peer"]:
            lines.append(
                f"| {r['source']} | {r['target']} | {r['p2p_access']} | {r['peer_gbps']:.1f} | "
                f"{r['host_gbps_of_target']:.1f} | {r['peer_over_host']:.2f} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("gpu-check"))
    p.add_argument("--models", nargs="+", default=["resnet50", "bert-base"])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--group", type=int, default=2 << 20, help="swap group bytes")
    args = p.parse_args(argv)
    try:
        import torch

        has_gpu = torch.cuda.is_available() and torch.cuda.device_count() > 0
    except ImportError:
        has_gpu = False
    if not has_gpu:
        print("gpu-check: no CUDA GPU on this host (torch.cuda.is_available() is False); nothing to check.")
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"host": host_facts()}
    report["tests"] = gpu_tests(args.out)
    report["swap"] = swap_bench(args.models, args.repeats, args.group)
    report["peer"] = peer_bench()
    (args.out / "gpu-check.json").write_text(json.dumps(report, indent=1))
    md = markdown(report)
    (args.out / "gpu-check.md").write_text(md)
    print(md)
    print(f"gpu-check: wrote {args.out / 'gpu-check.json'} and {args.out / 'gpu-check.md'}")
    return 1 if any(r["outcome"] in ("failed", "error") for r in report["tests"]) else 0


if __name__ == "__main__":
    sys.exit(main())
