"""Two requests a few ms apart, on a real server and in the simulator: the model of contention, pair by pair.

    python -m loadtest.simpair --profile simreal/profile.json --models resnet50 resnet18 \\
        --offsets 0 10 20 40 --repeats 10

A replay (`loadtest.simreal`) compares whole runs, and on a lightly loaded host its
verdicts turn on requests that overlap another: on 2026-12-07 its lone requests were
simulated within 1-6 ms at every quantile while those beside another were not. This
isolates that case. Each model is deployed as a function of its own on a real `torpor
serve` (CPU devices, both resident, one per device); the first model's request is sent,
the second's `offset` ms after it from another client, `repeats` times per offset with a
pause between; the simulator gets the same two arrivals on the profile (`--profile`: a
measured profile, e.g. simreal's OUT/profile.json, measured on this machine). Each
model's request is also timed alone, in turn with the pairs, so the host's speed now (it
drifts from the profile's by 10-20% within minutes) is told from the contention: per
offset and model it prints the median latency on both sides, the server's phases (its
Server-Timing header) and the simulation's (before its run, and the run), and each side's
latency over its own request alone; the last line, the median of real ÷ simulated of
those (1: the simulation slows a request beside another as the server does).
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from typing import Any

import httpx

from gateway.sim.engine import SimFunction, Simulation
from gateway.sim.profile import HardwareProfile, load
from gateway.sim.requestcost import body_for, serving
from loadtest.replay import server_timing
from loadtest.simreal import server_profile

PAUSE_S = 0.3  # between pairs: each pair meets an idle server
PHASES = ("read", "parse", "queue", "exec", "dispatch")
ALONE = -1.0  # the key of each model's request timed alone


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", required=True, help="a measured profile file or built-in name")
    ap.add_argument("--models", nargs=2, default=["resnet50", "resnet18"], help="first and second request's")
    ap.add_argument("--offsets", nargs="+", type=float, default=[0, 10, 20, 40], help="ms")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--device-memory", default="512MiB", help="per device: room for either model")
    ap.add_argument("--threads", type=int, default=1, help="compute threads per device (the profile's)")
    ap.add_argument("--sim-seeds", type=int, default=20)
    args = ap.parse_args(argv)
    try:
        profile = server_profile(load(args.profile), "cpu:2", args.device_memory)
    except ValueError as exc:
        raise SystemExit(f"simpair: {exc}") from None
    unknown = [m for m in args.models if m not in profile.models]
    if unknown:
        raise SystemExit(f"simpair: --models: {unknown} not in the profile ({sorted(profile.models)})")
    if args.repeats < 1 or any(o < 0 for o in args.offsets):
        raise SystemExit("simpair: --repeats: expected at least 1; --offsets: expected ms >= 0")
    real = measure(args.models, args.offsets, args.repeats, args.device_memory, args.threads, profile.request_encoding)
    simulated = simulate(profile, args.models, args.offsets, args.sim_seeds)
    alone = [statistics.median(g[0] for g in real[ALONE][k]) for k in range(2)]
    sim_alone = [statistics.median(s[0] for s in simulated[ALONE][k]) for k in range(2)]
    errors = []
    for o in [ALONE, *args.offsets]:
        for k, model in enumerate(args.models):
            got, sim = real[o][k], simulated[o][k]
            ms, sim_ms = statistics.median(g[0] for g in got), statistics.median(s[0] for s in sim)
            phases = " ".join(f"{p} {statistics.median(g[1][p] for g in got):5.1f}" for p in PHASES)
            line = (
                f"{'alone' if o == ALONE else f'offset {o:.0f} ms':>13} {model:10} real {ms:6.1f} ms ({phases}) "
                f"simulated {sim_ms:6.1f} ms (before its run {statistics.median(s[1] for s in sim):5.1f}, "
                f"run {statistics.median(s[2] for s in sim):6.1f})"
            )
            if o != ALONE:
                slowed, sim_slowed = ms / alone[k], sim_ms / sim_alone[k]
                errors.append(slowed / sim_slowed)
                line += f" over alone: real {slowed:.2f} simulated {sim_slowed:.2f}"
            print(line)
    print(
        f"a request beside another over alone, real / simulated, median over offsets and models: "
        f"{statistics.median(errors):.2f} ({min(errors):.2f}-{max(errors):.2f}); "
        f"alone, real / simulated: {alone[0] / sim_alone[0]:.2f} {alone[1] / sim_alone[1]:.2f}"
    )
    return 0


Timed = tuple[float, dict[str, float]]  # a request's latency (ms) and its Server-Timing phases


def measure(
    models: list[str], offsets: list[float], repeats: int, memory: str, threads: int, encoding: str = "json"
) -> dict[float, list[list[Timed]]]:
    """Per offset, per model (first, second), each pair's request as the server answered it (the
    bodies in `encoding`, the profile's)."""
    names = [f"{k}-{m}" for k, m in enumerate(models)]
    with serving(dict(zip(names, models, strict=True)), 2, memory, threads, "simpair") as srv:
        bodies = [body_for(m, encoding) for m in models]
        clients = [httpx.Client(base_url=srv.url, timeout=60) for _ in models]
        try:

            def post(k: int, at: float, into: list[Any]) -> None:
                time.sleep(max(0.0, at - time.perf_counter()))  # a sleep, not a spin: no core taken
                try:
                    t0 = time.perf_counter()
                    body = bodies[k]
                    r = clients[k].post(f"/v1/functions/{names[k]}/invoke", content=body.content, headers=body.headers)
                    ms = (time.perf_counter() - t0) * 1e3
                    if r.status_code != 200 or r.headers.get("x-torpor-cold") != "0":
                        raise RuntimeError(f"{names[k]}: {r.status_code}, cold {r.headers.get('x-torpor-cold')}")
                    into[k] = (ms, {p: float(v) for p, v in server_timing(r.headers["server-timing"]).items()})
                except Exception as exc:  # reported by the caller's thread
                    into[k] = exc

            def fire(schedule: list[tuple[int, float]]) -> list[Timed]:
                """Each (model index, when) from a thread of its own; any failure ends the run."""
                got: list[Any] = [None, None]
                threads = [threading.Thread(target=post, args=(k, at, got)) for k, at in schedule]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                time.sleep(PAUSE_S)
                failed = [g for g in got if isinstance(g, Exception)]
                if failed:
                    raise SystemExit(f"simpair: a request failed: {failed[0]}")
                return [got[k] for k, _ in schedule]

            for _ in range(2):  # both models resident, the paths warm
                for k in range(len(models)):
                    post(k, 0.0, [None, None])
            out: dict[float, list[list[Timed]]] = {o: [[], []] for o in [ALONE, *offsets]}
            for _ in range(repeats):
                for k in range(len(models)):
                    out[ALONE][k] += fire([(k, 0.0)])
                for o in offsets:
                    at = time.perf_counter() + 0.05
                    first, second = fire([(0, at), (1, at + o / 1e3)])
                    out[o][0].append(first)
                    out[o][1].append(second)
            return out
        finally:
            for c in clients:
                c.close()


def simulate(
    profile: HardwareProfile, models: list[str], offsets: list[float], seeds: int
) -> dict[float, list[list[tuple[float, float, float]]]]:
    """Per offset, per model: (latency, before its run, its run) in ms, one per simulator seed."""
    functions = [SimFunction(f"{k}-{m}", profile.models[m], 600_000.0) for k, m in enumerate(models)]
    out: dict[float, list[list[tuple[float, float, float]]]] = {}
    cases = [(ALONE, [(1.0, 0)]), (ALONE, [(1.0, 1)])] + [(o, [(1.0, 0), (1.0 + o / 1e3, 1)]) for o in offsets]
    for o, arrivals in cases:
        out.setdefault(o, [[], []])
        for seed in range(seeds):
            sim = Simulation(profile, "torpor", functions, seed=seed, record=True).run(arrivals)
            for fi, arrived, began, ended, _, cold in sim.served or []:
                if cold:
                    raise SystemExit(
                        f"simpair: {models[fi]} was not resident in the simulation: give more --device-memory"
                    )
                out[o][fi].append(((ended - arrived) * 1e3, (began - arrived) * 1e3, (ended - began) * 1e3))
    return out


if __name__ == "__main__":
    raise SystemExit(main())
