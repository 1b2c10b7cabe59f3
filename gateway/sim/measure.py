"""`torpor profile`: measure this machine into a hardware profile for the simulator.

On CPU devices it uses the worker's own swap code (gpuworker.bench_swap) for copy
bandwidth and for how much of a swap-in hides behind execution, and
shared.profiling for execution times: every model's batch-1 run in turn, round after
round over a window (`window_s`), as a server runs one function after another on a host
whose speed drifts; by batch size; and under a concurrent copy or execution; and the
server's own time per request, through a real `torpor serve` (gateway.sim.requestcost); and
the cores other processes keep busy (shared.hostload). On GPUs: pinned
host-to-device and device-to-device copies and synchronised execution timings, with
standard torch APIs only.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from dataclasses import replace

import torch

from gateway.costmodel import Topology
from gateway.sim import requestcost
from gateway.sim.profile import HardwareProfile, ModelProfile, spread_quantiles
from shared import hostload, program, zoo
from shared.config import DeviceSpec
from shared.loadproc import LoadProcesses
from shared.profiling import corun, log_spread, random_tensors, runs_in_turn
from shared.profiling import profile as profile_exec


def measure_profile(
    devices: tuple[DeviceSpec, ...],
    device_memory: int,
    models: list[str],
    max_batch: int,
    threads: int,
    progress: Callable[[str], None] = lambda _: None,
    window_s: float = 0.0,
    encoding: str = "json",
) -> HardwareProfile:
    if all(d.kind == "cpu" for d in devices):
        return _measure_cpu(len(devices), device_memory, models, max_batch, threads, progress, window_s, encoding)
    return _measure_cuda(devices, device_memory, models, max_batch, progress)


COPY_BYTES = 64 << 20  # another device's swap-in, copied over and over
# Requests timed alone per model for their spread: a p98 is a tail, and where the request is half
# the execution (a small image model) its own tail is a good part of the function's.
REQUEST_SPREAD_RUNS = 41
SWAP_REPEATS = 9  # cold runs per model for the pipeline overlap (each paired with warm ones)
RUNS = 7  # timed runs per measurement: a 2-core host's run times vary; 3 gave profiles 10-20% apart
MIN_JITTER = 0.05
BACKGROUND_S = 5.0  # idle sampling of the host's other processes


def _measure_cpu(
    n: int,
    memory: int,
    models: list[str],
    max_batch: int,
    threads: int,
    progress: Callable[[str], None],
    window_s: float,
    encoding: str,
) -> HardwareProfile:
    from gpuworker.bench_swap import Bench

    progress(f"measuring what other processes keep busy for {BACKGROUND_S:.0f} s ...")
    background = hostload.background_cores(BACKGROUND_S)
    progress(f"  {background:.2f} cores busy with other processes")
    bench = Bench.cpu(max(512 << 20, memory // 4), threads, 2 << 20)
    measured: dict[str, ModelProfile] = {}
    bandwidths, overlaps, slowdowns, spreads = [], [], [], []
    copy_ms: dict[str, float] = {}
    built: dict[str, tuple[torch.nn.Module, list[torch.Tensor]]] = {}
    try:
        for name in models:
            progress(f"profiling {name} ...")
            swap = bench.measure(name, repeats=SWAP_REPEATS)
            gm = program.build({"zoo": name}, meta=False)
            timing = profile_exec(gm, zoo.entry(name).inputs, max_batch, threads, runs=RUNS)
            bandwidths.append(swap["bytes"] / (swap["memcpy"] / 1e3))
            copy_ms[name] = swap["memcpy"]
            # The share of the copy a pipelined cold run hides: its time over a warm run's
            # (the copy's waits and its contention with the execution), against the copy.
            overlap = min(1.0, max(0.0, 1 - swap["unhidden"] / max(1e-9, min(swap["swap"], swap["warm"]))))
            overlaps.append(overlap)
            specs = zoo.entry(name).inputs
            # Beside the other devices executing it too, and beside a copy: processes of their
            # own, as the server's workers are.
            beside = LoadProcesses(n - 1, threads, "model", name)
            slowed, spread = corun(gm, specs, beside, threads) if n > 1 else (1.0, 0.0)
            copied, _ = corun(gm, specs, LoadProcesses(1, 1, "copy", str(COPY_BYTES)), threads)
            slowdowns.append(copied)
            spreads.append(spread)
            built[name] = (gm, random_tensors(specs, 1))
            measured[name] = ModelProfile(
                name,
                int(swap["bytes"]),
                timing.exec_ms,
                timing.batch_exec_ms,
                max_batch,
                timing.heavy,
                corun_slowdown=slowed,
                copy_slowdown=copied,
                pipeline_overlap=round(overlap, 3),
            )
            progress(
                f"  {name}: {swap['bytes'] / 2**20:.0f} MiB, exec {timing.exec_ms:.1f} ms, "
                f"batch {max_batch} {timing.batch_exec_ms or 0:.1f} ms, copy hidden in-process {overlap:.2f}, "
                f"beside another device's copy {copied:.2f}, "
                f"execution {slowed:.2f} (spread {spread:.2f})"
            )
        progress(f"timing a request of each model through a real torpor serve ({encoding}, outside queue and exec)")
        room = sum(m.nbytes for m in measured.values()) + (64 << 20)  # every model resident on every device
        costs = requestcost.measure(
            models, n, room, beside=n, threads=threads, spread_runs=REQUEST_SPREAD_RUNS, encoding=encoding
        )
        for name, cost in costs.items():
            by_k = tuple(round(f, 3) for f in cost.slowdowns)
            measured[name] = replace(
                measured[name], request_ms=cost.ms, request_slowdowns=by_k, request_quantiles=cost.quantiles
            )
            beside = ", ".join(f"{f:.2f}x beside {k + 1}" for k, f in enumerate(by_k))
            progress(
                f"  {name}: request {cost.ms:.1f} ms (p90 {cost.quantiles[-3]:.2f} x); {beside} device(s) executing"
            )
        progress("timing cold requests of each model through a real torpor serve (each against a warm one) ...")
        for name in models:
            m = measured[name]
            penalty = requestcost.cold_penalty(name, m.nbytes, SWAP_REPEATS, threads, encoding)
            overlap, fixed = cold_terms(penalty, copy_ms[name], m.exec_ms)
            measured[name] = replace(m, pipeline_overlap=round(overlap, 3), swap_latency_ms=round(fixed, 3))
            progress(
                f"  {name}: a cold request {penalty:.1f} ms longer than a warm one: copy hidden behind execution "
                f"{overlap:.2f} (in-process {m.pipeline_overlap:.2f}), fixed {fixed:.1f} ms"
            )
        progress(f"timing the models in turn for {window_s:.0f} s ...")
        times = runs_in_turn(built, window_s, RUNS, threads)
        measured = _timed_in_turn(measured, times, progress)
        in_turn = log_spread(times)
    finally:
        bench.close()
    bw = statistics.median(bandwidths)
    topology = Topology(
        capacities=(memory,) * n,
        switches=tuple(range(n)),  # CPU devices share no PCIe switch
        host_bandwidth=bw,
        pcie_peer_bandwidth=bw,
        pipeline_overlap=statistics.median(overlaps),
        interference=max(1.0, statistics.median(slowdowns)),
    )
    return HardwareProfile(
        f"{n} CPU devices on this machine ({threads} thread(s) each)",
        topology,
        measured,
        # The spread of the runs in turn over the window (the host's drift) or beside another
        # device's execution, whichever is wider; at least 0.05 (a quiet host's own).
        exec_jitter=round(max(MIN_JITTER, in_turn, statistics.median(spreads) if spreads else 0.0), 3),
        source=f"measured by torpor profile on {time.strftime('%Y-%m-%d')}",
        shared_host=True,
        host_cores=len(os.sched_getaffinity(0)),  # the devices, their copies and the gateway share them
        device_threads=threads,
        background_cores=hostload.capped(background, len(os.sched_getaffinity(0))),
        request_encoding=encoding,
    )


def cold_terms(penalty_ms: float, copy_ms: float, exec_ms: float) -> tuple[float, float]:
    """(pipeline_overlap, swap_latency_ms) that give a cold run alone `penalty_ms` over a warm one
    (costmodel.pipelined): the copy's unhidden share first, as it grows with a shared link; what
    exceeds the whole copy (or execution) is the swap-in's fixed cost. A copy longer than the
    execution adds their difference however well it hides: a penalty below that is read as it."""
    unhidden = penalty_ms - max(0.0, copy_ms - exec_ms)
    hideable = min(copy_ms, exec_ms)
    if unhidden <= 0 or hideable <= 0:
        return 1.0, max(0.0, unhidden)
    if unhidden <= hideable:
        return 1.0 - unhidden / hideable, 0.0
    return 0.0, unhidden - hideable


def retime(
    profile: HardwareProfile, window_s: float, progress: Callable[[str], None] = lambda _: None
) -> HardwareProfile:
    """The profile with each zoo model's execution time timed again, in turn over `window_s`, as
    `torpor profile` times it (batch times keep their ratio to batch 1): the host's speed now."""
    built = {
        name: (program.build({"zoo": name}, meta=False), random_tensors(zoo.entry(name).inputs, 1))
        for name in profile.models
    }
    progress(f"timing the models in turn for {window_s:.0f} s ...")
    times = runs_in_turn(built, window_s, RUNS, profile.device_threads or 1)
    return replace(profile, models=_timed_in_turn(profile.models, times, progress))


def _timed_in_turn(
    models: dict[str, ModelProfile], times: dict[str, list[float]], progress: Callable[[str], None]
) -> dict[str, ModelProfile]:
    """The models with their execution times the medians of their runs in turn, and the spread of
    those runs around the median (exec_quantiles)."""
    models = dict(models)
    for name, ts in times.items():
        m = models[name]
        exec_ms = statistics.median(ts)
        # The batch's time was measured beside the batch-1 one; it keeps their ratio.
        batch = m.batch_exec_ms * exec_ms / m.exec_ms if m.batch_exec_ms else None
        spread = spread_quantiles([t / exec_ms for t in ts])
        models[name] = replace(m, exec_ms=exec_ms, batch_exec_ms=batch, exec_quantiles=spread)
        progress(
            f"  {name}: exec {exec_ms:.1f} ms in turn ({len(ts)} runs, {min(ts):.1f}-{max(ts):.1f}; "
            f"mean {statistics.fmean(ts) / exec_ms:.3f} x the median, p90 {spread[-3]:.2f} x)"
        )
    return models


def _measure_cuda(
    devices: tuple[DeviceSpec, ...], memory: int, models: list[str], max_batch: int, progress: Callable[[str], None]
) -> HardwareProfile:
    first = torch.device("cuda", devices[0].index)
    nbytes = 256 << 20
    host = torch.empty(nbytes, dtype=torch.uint8).pin_memory()
    dev = torch.empty(nbytes, dtype=torch.uint8, device=first)
    host_bw = nbytes / _timed(lambda: dev.copy_(host, non_blocking=True), first)
    links: dict[tuple[int, int], float] = {}
    peer_bw = host_bw
    for j, other in enumerate(devices[1:], 1):
        dst = torch.empty(nbytes, dtype=torch.uint8, device=torch.device("cuda", other.index))
        bw = nbytes / _timed(lambda dst=dst: dst.copy_(dev), first)
        if bw > 1.5 * host_bw:  # clearly faster than PCIe: a direct link
            links[(0, j)] = bw
        else:
            peer_bw = bw
    measured = {}
    for name in models:
        progress(f"profiling {name} ...")
        model = zoo.build(name).to(first)
        specs = zoo.entry(name).inputs
        x1 = [t.to(first) for t in random_tensors(specs, 1)]
        xb = [t.to(first) for t in random_tensors(specs, max_batch)]
        with torch.inference_mode():
            e1 = _timed(lambda m=model, x=x1: m(*x), first) * 1e3
            eb = _timed(lambda m=model, x=xb: m(*x), first) * 1e3
        size = sum(t.numel() * t.element_size() for t in model.state_dict().values())
        measured[name] = ModelProfile(name, size, e1, eb, max_batch, True)
    topology = Topology(
        capacities=(memory,) * len(devices),
        switches=tuple(range(len(devices))),  # refine by hand from `nvidia-smi topo -m`
        host_bandwidth=host_bw,
        pcie_peer_bandwidth=peer_bw,
        links=links,
    )
    return HardwareProfile(f"{len(devices)} GPUs on this machine", topology, measured, 0.05, "torpor profile")


def _timed(fn: Callable[[], object], device: torch.device, runs: int = 5) -> float:
    """Median seconds of `fn` on `device`, synchronised."""
    fn()
    torch.cuda.synchronize(device)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)
