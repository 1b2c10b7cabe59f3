"""Host memory as functions are deployed: the gateway stays flat, each model is on the host once.

Starts a real server, deploys N functions one by one and reads /proc after each:

* the gateway's private memory (Private_Clean + Private_Dirty of smaps_rollup): models
  are built in short-lived builder processes, so it must not grow with the deploys;
* host memory per function = (bytes of the functions' shared-memory images + growth of
  every server process's private memory since idle) ÷ the models' bytes: ~1.0 when
  a model's weights exist once, whatever the number of workers.

    python -m loadtest.bench_memory [--functions 50] [--model mlp] [--devices cpu:2]

Prints ratios measured in this run; wall-clock noise from other work does not matter here.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from loadtest.server import Server, shm_segments_of
from shared.hostload import process_cpu_s

MB = 1 << 20


def private_bytes(pid: int) -> int:
    """Private (unshared) resident bytes of a process, but not of its shared-memory mappings.

    A page of a model image or an arena that only one process has touched counts as
    that process's "private" in smaps, yet it is the segment's page, counted once with
    the segments; so mappings under /dev/shm are left out here.
    """
    total, shm = 0, False
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split(maxsplit=5)
        if len(head) >= 5 and "-" in head[0] and not head[0].endswith(":"):
            shm = len(head) == 6 and head[5].startswith("/dev/shm/")  # a new mapping's header line
            continue
        key, _, rest = line.partition(":")
        if not shm and key in ("Private_Clean", "Private_Dirty"):
            total += int(rest.split()[0]) * 1024
    return total


def maps_torch(pid: int) -> bool:
    """Whether the process has torch's shared library mapped (it imported torch)."""
    return "libtorch" in Path(f"/proc/{pid}/maps").read_text()


def worker_pids(server: Server) -> list[int]:
    devices = server.client.get("/v1/devices").json()["devices"]
    return [d["pid"] for d in devices if d["pid"]]


def child_pids(pid: int) -> list[int]:
    """The long-lived children: workers, the builders' fork server, multiprocessing's resource tracker."""
    return sorted(
        int(c) for task in Path(f"/proc/{pid}/task").iterdir() for c in (task / "children").read_text().split()
    )


def settle(pid: int, quiet_s: float = 0.5, timeout_s: float = 60.0) -> None:
    """Wait until the server `pid` and its children use no CPU for `quiet_s`: a server is ready
    before its builders' fork server has finished importing torch, whose memory is no deploy's."""
    deadline = time.monotonic() + timeout_s
    last = process_cpu_s(pid)
    while time.monotonic() < deadline:
        time.sleep(quiet_s)
        now = process_cpu_s(pid)
        if now == last:
            return
        last = now


def image_bytes(server: Server) -> int:
    """Bytes the server's model images occupy in /dev/shm (allocated blocks, not apparent size)."""
    return sum(os.stat(f"/dev/shm/{n}").st_blocks * 512 for n in shm_segments_of(server.pid) if "-model-" in n)


def measure(functions: int, model: str, devices: str, memory: str, out: list[str]) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="torpor-mem-") as tmp:
        server = Server(Path(tmp) / "state", devices=devices, memory=memory).start()
        try:
            pids = [server.pid, *child_pids(server.pid)]
            settle(server.pid)
            workers = set(worker_pids(server))
            idle = {p: private_bytes(p) for p in pids}
            model_bytes = 0
            gateway_after: list[int] = []
            first: dict[int, int] = {}
            for i in range(functions):
                r = server.deploy(f"f{i}", {"model": {"zoo": model, "seed": i}, "slo_ms": 5000})
                if r.status_code != 201:
                    raise RuntimeError(f"deploy f{i}: {r.status_code} {r.text}")
                model_bytes += r.json()["model_bytes"]
                gateway_after.append(private_bytes(server.pid))
                if i == 0:  # after one-time costs (the first program a worker builds imports more)
                    first = {p: private_bytes(p) for p in pids}
            growths = [max(0, private_bytes(p) - idle[p]) for p in pids]
            growth = sum(growths)
            images = image_bytes(server)
            result = {
                "gateway_idle_mb": idle[server.pid] / MB,
                "gateway_after_mb": gateway_after[-1] / MB,
                "gateway_growth_per_function_mb": (gateway_after[-1] - idle[server.pid]) / MB / functions,
                "model_mb": model_bytes / MB,
                "images_mb": images / MB,
                "private_growth_mb": growth / MB,
                "worker_growth_per_function_mb": sum(g for p, g in zip(pids, growths, strict=True) if p in workers)
                / MB
                / functions
                / len(workers),
                # Beyond the first function: what each further function costs every worker.
                "worker_marginal_per_function_mb": sum(private_bytes(p) - first[p] for p in workers)
                / MB
                / max(1, functions - 1)
                / len(workers),
                "host_per_model_byte": (images + growth) / model_bytes,
                "gateway_maps_torch": float(maps_torch(server.pid)),
            }
        finally:
            server.stop()
    out.append(
        f"{functions} x {model} on {devices}: gateway private {result['gateway_idle_mb']:.1f} MB idle -> "
        f"{result['gateway_after_mb']:.1f} MB ({result['gateway_growth_per_function_mb']:.2f} MB per function); "
        f"models {result['model_mb']:.0f} MB, images {result['images_mb']:.0f} MB, private growth of all server "
        f"processes {result['private_growth_mb']:.1f} MB "
        f"({result['worker_growth_per_function_mb']:.2f} MB per function per worker, "
        f"{result['worker_marginal_per_function_mb']:.2f} MB "
        f"for each function after the first); host bytes per model byte "
        f"{result['host_per_model_byte']:.3f}; gateway maps torch: {bool(result['gateway_maps_torch'])}"
    )
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--functions", type=int, default=8)
    p.add_argument("--model", default="resnet50")
    p.add_argument("--devices", default="cpu:2")
    p.add_argument("--memory", default="512MiB")
    args = p.parse_args(argv)
    lines: list[str] = []
    measure(args.functions, args.model, args.devices, args.memory, lines)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
