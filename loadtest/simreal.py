"""Does the simulator predict the real server? The same trace, replayed and simulated, side by side.

    python -m loadtest.simreal --functions 24 --models resnet50 resnet152 bert-base --device-memory 512MiB \\
        --minutes 10 --rate 0.05 --out simreal/

1. starts a real `torpor serve` (CPU devices) and deploys N functions round-robin over
   the models, each with SLO = slo_factor × the model's execution time in the profile;
2. replays a generated trace against it with the locust replay (`loadtest.run`), open loop:
   the bursty lognormal trace (`--rate`), or Torpor's own workload (`--shape uniform --rpm
   5:30`: each function's requests per minute uniform in 5-30, spread evenly in the minute);
3. simulates the very same trace (same generator, seed and arrival times) on the profile,
   with the server's device count and memory, once per simulator seed (`--sim-seeds`: the
   simulator draws execution times, so its prediction is the median over seeds, with their range);
4. prints per function the requests, p98 and whether the SLO was met, real and simulated,
   and the agreement: functions meeting their SLO (difference as a share of the functions
   deployed; goal within 5%) and the median over functions of simulated ÷ real p98 (goal
   within 25%). Writes OUT/comparison.json and the load test's report under OUT/real/.

The profile is measured on this machine first (as `torpor profile` does; written to
OUT/profile.json): a 2-core machine's speed differs between hosts and hours, and a profile
measured elsewhere predicts that other machine. The models' execution times are timed
again, the same way, right after the replay (OUT/profile-after.json); the simulation uses
the times halfway between the two, and the host's speed on the straight line from the one
timing to the other, minute by minute (lines show the simulation at the halfway times
throughout, and on the times before only).
The server's SLOs are the ones deployed, from the profile measured before. The server
measures at deploy, per function, whether a model is heavy (its only copy costly to evict,
so no duplicate evicts it); the simulated scheduler is told the server's flags
(OUT/real/deployed.json), not the profile's one per model.
Where the two disagree, the model of the hardware or of the server is what to fix.

The server is not alone on the host: the load generator and system services take a share
of its cores. The simulation gives them what they took during the replay (the host's busy
time less the server's own processes' CPU time, OUT/real/host.json), where the profile has
only its idle sample.

A diagnostic follows the verdict: the same simulations with each model's execution time
at the speed the server showed (the median of its executions that ran with no other one
beside them, over the profile's): this host's speed drifts by 10-20% within minutes, and
this line tells such drift (the profile measured at another speed than the run's) from an
error in the model of the server. Two more lines: the mean execution per request, real over
simulated, minute by minute (a host that slows within the run), and the cold starts per
model on both sides (the scheduling, apart from the hardware). `--again` re-simulates the
replay already in --out (its profile.json and real/requests.csv; give the same options)
without measuring or replaying: for changes to the simulator.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from gateway.sim.engine import SimFunction, Simulation
from gateway.sim.profile import HardwareProfile, ModelProfile, load
from gateway.sim.summary import summarize
from loadtest.replay import SHAPES, ReplayConfig, load_trace
from loadtest.server import Server
from shared import shm, traces
from shared.config import parse_devices, parse_size
from shared.hostload import BusyMeter, capped
from shared.specs import ENCODINGS


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--profile",
        default="measure",
        help="'measure' (default): time the models and the copy on this machine first, as `torpor profile` "
        "does; or a profile file or built-in name measured earlier",
    )
    ap.add_argument("--devices", default="cpu:2")
    ap.add_argument("--device-memory", default="512MiB", help="per device: less than the functions' models")
    ap.add_argument("--functions", type=int, default=24)
    ap.add_argument("--models", nargs="+", default=["resnet50", "resnet152", "bert-base"])
    ap.add_argument("--minutes", type=float, default=10, help="replay length (fractions allowed for a quick try)")
    ap.add_argument("--rate", type=float, default=0.05, help="mean requests/s per function")
    ap.add_argument(
        "--shape",
        choices=SHAPES,
        default="lognormal",
        help="the generated trace: lognormal (rates heavy-tailed across functions, bursts within a minute; "
        "default) or uniform (Torpor's workload: each function's requests per minute uniform in --rpm, "
        "spread evenly; --rate is then unused)",
    )
    ap.add_argument("--rpm", default="5:30", help="uniform: LOW:HIGH requests per minute per function")
    ap.add_argument("--slo-factor", type=float, default=5.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sim-seeds", type=int, default=5, help="simulations of the trace (execution-time draws)")
    ap.add_argument(
        "--profile-window",
        type=float,
        default=60.0,
        help="seconds the measured profile samples execution times over (torpor profile --window)",
    )
    ap.add_argument(
        "--encoding",
        choices=ENCODINGS,
        default="json",
        help="the replay's request bodies: JSON tensors, or Triton's binary extension (the profile times the same)",
    )
    ap.add_argument("--out", default="simreal")
    ap.add_argument("--again", action="store_true", help="re-simulate the replay already in --out")
    args = ap.parse_args(argv)
    shm.exit_on_sigterm()  # a kill still stops the server and unlinks the profile's segments
    if args.sim_seeds < 1:
        raise SystemExit(f"simreal: --sim-seeds: expected at least 1, got {args.sim_seeds}")
    try:
        rpm = traces.parse_rpm(args.rpm)
    except ValueError as exc:
        raise SystemExit(f"simreal: --rpm: {exc}") from None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.again and not (out / "real" / "requests.csv").exists():
        raise SystemExit(f"simreal: --again: no replay in {out} (expected {out / 'real' / 'requests.csv'})")
    measuring = args.profile == "measure" and not args.again
    try:
        if args.again:
            measured = load(out / "profile.json")
        else:
            measured = _measured(args, out) if measuring else load(args.profile)
        profile = server_profile(measured, args.devices, args.device_memory)
    except ValueError as exc:
        raise SystemExit(f"simreal: {exc}") from None
    if profile.request_encoding != args.encoding:
        raise SystemExit(
            f"simreal: --encoding {args.encoding}: the profile timed {profile.request_encoding} requests "
            f"(give --encoding {profile.request_encoding}, or a profile measured with this encoding)"
        )
    unknown = [m for m in args.models if m not in profile.models]
    if unknown:
        raise SystemExit(f"simreal: models {unknown} are not in the profile ({sorted(profile.models)})")
    # SLOs from the profile measured before the replay: the server is deployed with them.
    functions = [
        SimFunction(f"f{i:03d}", profile.models[m], args.slo_factor * profile.models[m].exec_ms)
        for i, m in enumerate(args.models[i % len(args.models)] for i in range(args.functions))
    ]
    seconds = max(1, round(args.minutes * 60))
    log = out / "real" / "requests.csv"
    if not args.again:
        replay(functions, args, seconds, out / "real")
    functions = as_deployed(functions, out / "real" / DEPLOYED)
    if measuring:
        _retimed(measured, args, out)
    host = out / "real" / "host.json"
    idle_background = profile.background_cores
    if host.exists():
        # What other processes (the load generator, system services) kept busy during the
        # replay, rather than the profile's idle sample: the cores the server had left.
        busy = float(json.loads(host.read_text())["background_cores"])
        profile = replace(profile, background_cores=capped(busy, profile.host_cores or 1))
    before = functions
    trend: tuple[float, ...] = ()
    if (out / "profile-after.json").exists() and (measuring or args.again):
        # The host's speed drifts by 10-20% within minutes: the execution times timed before and
        # after the replay, averaged, are the speed the replay most likely ran at, and the line
        # between the two timings the likeliest course through it.
        after = load(out / "profile-after.json")
        functions = [replace(f, model=_between(f.model, after.models.get(f.model.name))) for f in functions]
        trend = speed_trend(before, after, seconds / 60, args.profile_window / 60)
    rows = read_log(log, functions)
    real = outcomes(rows, functions)
    # The replay's own trace and arrival times (what loadtest.run gives locust), built the same way.
    plan = ReplayConfig(
        functions=args.functions, rate=args.rate, shape=args.shape, rpm=rpm, minutes=-(-seconds // 60), seed=args.seed
    )
    trace = load_trace(plan, args.functions)
    arrivals = [(t, fi) for t, fi in trace.arrivals(seed=args.seed, even=plan.even) if t < seconds]

    sims: list[Simulation] = []

    def simulate(functions: list[SimFunction], drift: tuple[float, ...] = ()) -> list[dict[str, Any]]:
        sims[:] = [
            Simulation(profile, "torpor", functions, seed=args.seed + k, record=True, drift=drift).run(arrivals)
            for k in range(args.sim_seeds)
        ]
        return [summarize(sim) for sim in sims]

    result = compare(real, simulate(functions, trend), functions)
    result["speed_trend"] = trend
    result["background_cores"] = {"idle": idle_background, "replay": profile.background_cores}
    runs = real_runs(rows, functions)
    result["beside"] = {"real": beside([runs]), "sim": beside([sim_runs(sim) for sim in sims])}
    result["exec_by_model"] = exec_by_model(runs, functions)
    result["by_minute"] = by_minute(rows, sims)
    result["cold_starts"] = cold_starts(rows, functions, sims)
    result["heavy"] = heavy_by_model(functions)
    lone = lone_runs(runs)
    speed = speed_seen(lone, functions)
    at_speed = [
        replace(f, model=replace(f.model, exec_ms=f.model.exec_ms * s, batch_exec_ms=_scaled(f.model.batch_exec_ms, s)))
        for f in functions
        for s in [speed.get(f.model.name) or 1.0]
    ]
    drift = drift_by_minute(lone, speed, runs[0].start) if runs else ()
    seen = compare(real, simulate(at_speed), at_speed)
    wandering = compare(real, simulate(at_speed, drift), at_speed)
    result["at_server_speed"] = {"speed": speed, **_headline(seen), "drift": drift, "by_minute": _headline(wandering)}
    if trend:
        result["halfway_speed"] = _headline(compare(real, simulate(functions), functions))
    if functions is not before:
        first = compare(real, simulate(before), before)
        result["profile_before_only"] = {
            "exec_ms": {
                f.model.name: (b.model.exec_ms, f.model.exec_ms) for f, b in zip(functions, before, strict=True)
            },
            **_headline(first),
        }
    (out / "comparison.json").write_text(json.dumps(result, indent=1))
    print(render(result))
    return 0


def _headline(comparison: dict[str, Any]) -> dict[str, Any]:
    """A simulation's side of a comparison: what a diagnostic line quotes."""
    return {k: comparison[k] for k in ("sim_meeting_slo", "sim_meeting_slo_range", "median_p98_ratio")}


def _scaled(ms: float | None, factor: float) -> float | None:
    return None if ms is None else ms * factor


def _measured(args: argparse.Namespace, out: Path) -> HardwareProfile:
    """This machine's figures now: a profile measured minutes ago elsewhere predicts another machine."""
    from gateway.sim.measure import measure_profile  # imports torch: only for this step
    from gateway.sim.profile import dump

    budget = parse_size(args.device_memory, "--device-memory")
    profile = measure_profile(
        parse_devices(args.devices),
        budget,
        args.models,
        8,
        1,
        progress=print,
        window_s=args.profile_window,
        encoding=args.encoding,
    )
    (out / "profile.json").write_text(json.dumps(dump(profile, budget), indent=1))
    # The figures as written (rounded), which --again reads: near the knee a simulated count
    # moves by two functions of 32 between the measured figures and their rounding.
    return load(out / "profile.json")


def _retimed(measured: HardwareProfile, args: argparse.Namespace, out: Path) -> None:
    """Time the models again after the replay, as the profile did before it (OUT/profile-after.json)."""
    from gateway.sim.measure import retime  # imports torch: only for this step
    from gateway.sim.profile import dump

    print("after the replay:")
    after = retime(measured, args.profile_window, progress=print)
    budget = parse_size(args.device_memory, "--device-memory")
    (out / "profile-after.json").write_text(json.dumps(dump(after, budget), indent=1))


def _between(before: ModelProfile, after: ModelProfile | None) -> ModelProfile:
    """The model's execution times halfway between those timed before and after the replay, and
    the spread of its runs halfway between the two timings' (point by point)."""
    if after is None:
        return before
    exec_ms = (before.exec_ms + after.exec_ms) / 2
    spread = before.exec_quantiles
    if len(after.exec_quantiles) == len(spread):
        spread = tuple((a + b) / 2 for a, b in zip(spread, after.exec_quantiles, strict=True))
    return replace(
        before,
        exec_ms=exec_ms,
        batch_exec_ms=_scaled(before.batch_exec_ms, exec_ms / before.exec_ms),
        exec_quantiles=spread,
    )


def speed_trend(before: list[SimFunction], after: HardwareProfile, minutes: float, window: float) -> tuple[float, ...]:
    """Per minute of the replay, the host's speed on the straight line from the timings before
    it to those after it, over their average (which the simulation's execution times are):
    the median over the models of after / before sets the line. Each timing stands at the
    middle of its `window` (minutes), which ends as the replay starts and starts as it ends.
    Empty where no model was timed after."""
    ratios = [
        after.models[f.model.name].exec_ms / f.model.exec_ms
        for f in {f.model.name: f for f in before}.values()
        if f.model.name in after.models and f.model.exec_ms > 0
    ]
    if not ratios:
        return ()
    r = float(np.median(ratios))
    middles = [(i + min(i + 1, minutes)) / 2 for i in range(max(1, math.ceil(minutes)))]  # of the minutes replayed
    span = minutes + window
    return tuple(round((1 + (r - 1) * (t + window / 2) / span) / ((1 + r) / 2), 4) for t in middles)


def server_profile(profile: HardwareProfile, devices: str, memory: str) -> HardwareProfile:
    """The profile's figures on the server's devices and memory."""
    n = len(parse_devices(devices))
    budget = parse_size(memory, "--device-memory")
    t = profile.topology
    topology = replace(
        t, capacities=(budget,) * n, switches=tuple(range(n)) if t.devices != n else t.switches, links=t.links
    )
    return replace(profile, topology=topology)


def replay(functions: list[SimFunction], args: argparse.Namespace, seconds: int, out: Path) -> None:
    """Deploy the functions on a real server and replay the trace (its log: out/requests.csv)."""
    with tempfile.TemporaryDirectory(prefix="simreal-") as tmp:
        server = Server(Path(tmp) / "state", devices=args.devices, memory=args.device_memory).start()
        try:
            for f in functions:
                r = server.deploy(f.name, {"model": {"zoo": f.model.name}, "slo_ms": f.slo_ms})
                if r.status_code not in (200, 201):
                    raise SystemExit(f"simreal: deploying {f.name}: {r.status_code} {r.text}")
            out.mkdir(parents=True, exist_ok=True)
            (out / DEPLOYED).write_text(json.dumps(deployed_flags(server, functions), indent=1))
            cmd = [sys.executable, "-m", "loadtest.run", "--url", server.url, "--duration", str(seconds)]
            cmd += ["--users", "2", "--functions", str(len(functions)), "--rate", str(args.rate)]
            cmd += ["--shape", args.shape, "--rpm", args.rpm]
            cmd += ["--seed", str(args.seed), "--encoding", args.encoding, "--out", str(out)]
            assert server.proc is not None
            others = BusyMeter(server.proc.pid).start()
            done = subprocess.run(cmd, capture_output=True, text=True)
            (out / "host.json").write_text(json.dumps({"background_cores": round(others.stop(), 3)}))
            if done.returncode != 0:
                raise SystemExit(f"simreal: the load test failed:\n{done.stdout}{done.stderr}")
        finally:
            server.stop()


DEPLOYED = "deployed.json"  # under OUT/real/: what the server measured of each function at deploy


def deployed_flags(server: Server, functions: list[SimFunction]) -> dict[str, Any]:
    """What the server's scheduler was told of each function at deploy that the profile also
    says: whether its model is heavy (measured per function, a few runs each)."""
    heavy = {}
    for f in functions:
        r = server.client.get(f"/v1/functions/{f.name}")
        if r.status_code != 200:
            raise SystemExit(f"simreal: reading {f.name} back: {r.status_code} {r.text}")
        heavy[f.name] = bool(r.json()["schedule"]["heavy"])
    return {"heavy": heavy}


def as_deployed(functions: list[SimFunction], path: Path) -> list[SimFunction]:
    """The functions as the server deployed them (`path`, written by the replay): its scheduler
    decides whether to duplicate or evict a model by its heavy flag, which it measures per
    function and which can differ from the profile's for the same model. A replay from before
    the file existed keeps the profile's."""
    if not path.exists():
        return functions
    heavy = json.loads(path.read_text())["heavy"]
    missing = [f.name for f in functions if f.name not in heavy]
    if missing:
        raise SystemExit(f"simreal: {path}: no heavy flag for {missing[:3]}: give the options of its run")
    return [replace(f, heavy=bool(heavy[f.name])) for f in functions]


def heavy_by_model(functions: list[SimFunction]) -> dict[str, dict[str, Any]]:
    """Per model: functions the server deployed as heavy, of how many, and the profile's flag."""
    out: dict[str, dict[str, Any]] = {}
    for f in functions:
        seen = out.setdefault(f.model.name, {"heavy": 0, "functions": 0, "profile": f.model.heavy})
        seen["heavy"] += f.told_heavy
        seen["functions"] += 1
    return out


def read_log(log: Path, functions: list[SimFunction]) -> list[dict[str, str]]:
    """The replay's request log, one dict per request, every one of a deployed function."""
    names = {f.name for f in functions}
    with open(log, newline="") as fh:
        rows = list(csv.DictReader(fh))
    for row in rows:
        if row["function"] not in names:
            raise SystemExit(f"simreal: {log} has function {row['function']!r}: give the options of its run")
    return rows


def outcomes(rows: list[dict[str, str]], functions: list[SimFunction]) -> dict[str, list]:
    """Each function's latencies in the replay's request log (None: failed)."""
    seen: dict[str, list] = {f.name: [] for f in functions}
    for row in rows:
        seen[row["function"]].append(float(row["ms"]) if row["status"] == "200" else None)
    return seen


class Run(NamedTuple):
    """One execution, on the server or in a simulation."""

    start: float  # s, on its replay's or simulation's own clock
    end: float
    model: str
    cold: bool
    ratio: float  # its execution / the profile's


def real_runs(rows: list[dict[str, str]], functions: list[SimFunction]) -> list[Run]:
    """The server's runs from the client's log, in start order: a run ends when its response
    arrives and lasted its reported execution (approximate, and good enough to tell an
    execution alone from one beside another)."""
    model_of = {f.name: f.model for f in functions}
    runs = []
    for row in rows:
        if row["status"] == "200" and row.get("exec_ms"):
            m, ms = model_of[row["function"]], float(row["exec_ms"])
            end = float(row["start"]) + float(row["ms"]) / 1e3
            runs.append(Run(end - ms / 1e3, end, m.name, row["source"] != "resident", ms / m.exec_ms))
    return sorted(runs)


def sim_runs(sim: Simulation) -> list[Run]:
    """The simulation's runs, as real_runs gives the server's (one per run, not per request)."""
    runs = {(began, ended, fi, cold) for fi, _, began, ended, _, cold in sim.served or []}
    return sorted(
        Run(a, b, sim.functions[fi].model.name, cold, (b - a) * 1e3 / sim.functions[fi].model.exec_ms)
        for a, b, fi, cold in runs
    )


def speed_seen(lone: list[Run], functions: list[SimFunction]) -> dict[str, float | None]:
    """Per model: the median execution the server reported for warm runs with no other run beside
    them (`lone`, from lone_runs), over the profile's execution time (the host's speed during the
    replay, against the profile's). A cold run's execution includes waiting for its copy."""
    alone: dict[str, list[float]] = {f.model.name: [] for f in functions}
    for r in lone:
        alone[r.model].append(r.ratio)
    return {m: float(np.median(v)) if v else None for m, v in alone.items()}


def lone_runs(runs: list[Run]) -> list[Run]:
    """The warm runs no other run overlapped: the host's speed, free of contention."""
    return [
        r
        for i, r in enumerate(runs)
        if not r.cold and not any(x.start < r.end and x.end > r.start for j, x in enumerate(runs) if j != i)
    ]


DRIFT_MIN_RUNS = 3  # lone warm runs a minute needs to tell its speed


def drift_by_minute(lone: list[Run], speed: dict[str, float | None], first: float) -> tuple[float, ...]:
    """Per minute of the replay (from its first run, at `first`), the median of its lone warm runs
    (`lone`), each over its model's median for the whole replay (`speed`): the host's speed
    wandering within the run (1.0 where a minute had too few lone runs to tell)."""
    minutes: dict[int, list[float]] = {}
    for r in lone:
        if speed.get(r.model):
            minutes.setdefault(int((r.start - first) // 60), []).append(r.ratio / speed[r.model])
    if not minutes:
        return ()
    return tuple(
        round(float(np.median(v)), 3) if len(v := minutes.get(m, [])) >= DRIFT_MIN_RUNS else 1.0
        for m in range(max(minutes) + 1)
    )


def beside(replays: list[list[Run]]) -> dict[str, float]:
    """Mean execution / the profile's per model, warm or cold, and what ran beside it: nothing
    (under 5% of its time), a cold start (a copy) for over 30% of its time, or warm runs: where
    the simulator's model of contention on the host is right or wrong. Each replay or
    simulation is on its own clock."""
    seen: dict[str, list[float]] = {}
    for runs in replays:
        for i, r in enumerate(runs):
            overlap = copying = 0.0
            for j, x in enumerate(runs):
                if x.start >= r.end:
                    break
                if j != i and x.end > r.start:
                    share = (min(r.end, x.end) - max(r.start, x.start)) / max(r.end - r.start, 1e-9)
                    overlap += share
                    copying += share if x.cold else 0.0
            where = "alone" if overlap < 0.05 else "beside a cold start" if copying > 0.3 else "beside warm runs"
            seen.setdefault(f"{r.model} {'cold' if r.cold else 'warm'} {where}", []).append(r.ratio)
    return {k: round(float(np.mean(v)), 3) for k, v in sorted(seen.items())}


def by_minute(rows: list[dict[str, str]], sims: list[Simulation]) -> list[dict[str, Any]]:
    """Per minute of the trace (from its first request), the mean execution per request on the
    server and in the simulations: a host whose speed drifts within the run shows here, where
    one execution time per model cannot follow it."""
    real = [(float(r["start"]), float(r["exec_ms"])) for r in rows if r["status"] == "200" and r["exec_ms"]]
    sim = [(a, (e - b) * 1e3) for s in sims for _, a, b, e, _, _ in s.served or []]
    minutes: dict[int, dict[str, list[float]]] = {}
    for side, pairs in (("real", real), ("sim", sim)):
        first = min((t for t, _ in pairs), default=0.0)
        for t, ms in pairs:
            minutes.setdefault(int((t - first) // 60), {"real": [], "sim": []})[side].append(ms)
    return [
        {"minute": k, "real_exec_ms": float(np.mean(v["real"])), "sim_exec_ms": float(np.mean(v["sim"]))}
        for k, v in sorted(minutes.items())
        if v["real"] and v["sim"]
    ]


def cold_starts(
    rows: list[dict[str, str]], functions: list[SimFunction], sims: list[Simulation]
) -> dict[str, list[float]]:
    """Per model, the requests that started cold on the server and in the simulations (their
    mean): where these agree and latencies do not, the scheduling is the same and the hardware not."""
    model_of = {f.name: f.model.name for f in functions}
    counts: dict[str, list[float]] = {m: [0, 0.0] for m in dict.fromkeys(model_of.values())}
    for r in rows:
        if r["status"] == "200" and r["source"] != "resident":
            counts[model_of[r["function"]]][0] += 1
    for s in sims:
        for fi, _, _, _, _, cold in s.served or []:
            counts[s.functions[fi].model.name][1] += cold / len(sims)
    return counts


def exec_by_model(runs: list[Run], functions: list[SimFunction]) -> dict[str, dict[str, float | None]]:
    """Per model: the profile's execution time against the median the server reported (x-torpor-exec-ms)."""
    profiled = {f.model.name: f.model.exec_ms for f in functions}
    seen: dict[str, list[float]] = {m: [] for m in profiled}
    for r in runs:
        seen[r.model].append(r.ratio * profiled[r.model])
    return {
        m: {"profile_ms": profiled[m], "real_median_ms": float(np.median(v)) if v else None} for m, v in seen.items()
    }


def _p98(latencies: list[float | None]) -> float | None:
    if not latencies:
        return None
    full = np.sort([np.inf if v is None else v for v in latencies])
    v = float(full[max(0, int(np.ceil(0.98 * len(full))) - 1)])
    return v if np.isfinite(v) else None


def compare(real: dict[str, list], sims: list[dict[str, Any]], functions: list[SimFunction]) -> dict[str, Any]:
    """Real outcomes against the simulations of the same trace (one per simulator seed).

    Per function the simulated p98 is the median over the simulations and the verdict the
    majority's; the simulated count of functions meeting SLO is the median of the counts.
    """
    runs = [{f["name"]: f for f in sim["per_function"]} for sim in sims]
    rows, ratios = [], []
    for f in functions:
        lat = real[f.name]
        on_time = sum(v is not None and v <= f.slo_ms for v in lat)
        seen = [run[f.name] for run in runs]
        p98s = [s["p98_ms"] for s in seen if s["p98_ms"] is not None]
        row = {
            "function": f.name,
            "model": f.model.name,
            "slo_ms": round(f.slo_ms, 1),
            "real_requests": len(lat),
            "sim_requests": seen[0]["requests"],
            "real_p98_ms": _p98(lat),
            "sim_p98_ms": float(np.median(p98s)) if 2 * len(p98s) > len(seen) else None,
            "real_meets": bool(lat) and on_time / len(lat) >= f.percentile,
            "sim_meets": 2 * sum(bool(s["meets_slo"]) for s in seen) > len(seen),
        }
        rows.append(row)
        if row["real_p98_ms"] and row["sim_p98_ms"]:
            ratios.append(row["sim_p98_ms"] / row["real_p98_ms"])
    real_ok = sum(r["real_meets"] for r in rows)
    counts = [sum(bool(run[f.name]["meets_slo"]) for f in functions) for run in runs]
    sim_ok = int(np.median(counts))
    median = float(np.median(ratios)) if ratios else None
    return {
        "functions": len(rows),
        "real_meeting_slo": real_ok,
        "sim_meeting_slo": sim_ok,
        "sim_meeting_slo_range": [min(counts), max(counts)],
        "sim_meeting_slo_counts": counts,
        "meeting_gap_share": abs(real_ok - sim_ok) / max(1, len(rows)),
        "median_p98_ratio": median,
        "agrees": abs(real_ok - sim_ok) <= 0.05 * len(rows) and median is not None and 0.75 <= median <= 1.25,
        "per_function": rows,
    }


def render(result: dict[str, Any]) -> str:
    def ms(v: float | None, digits: int = 0) -> str:
        return "-" if v is None else f"{v:.{digits}f}"

    lines = [
        f"{'function':<9}{'model':<11}{'SLO ms':>7}{'requests real/sim':>19}{'p98 real':>10}{'p98 sim':>9}"
        f"{'meets real/sim':>16}"
    ]
    for r in result["per_function"]:
        meets = f"{'yes' if r['real_meets'] else 'no'}/{'yes' if r['sim_meets'] else 'no'}"
        lines.append(
            f"{r['function']:<9}{r['model']:<11}{r['slo_ms']:>7.0f}{r['real_requests']:>12}/{r['sim_requests']:<6}"
            f"{ms(r['real_p98_ms']):>10}{ms(r['sim_p98_ms']):>9}{meets:>16}"
        )
    for model, e in result.get("exec_by_model", {}).items():
        real = e["real_median_ms"]
        ratio = "" if real is None else f" (real / profile {real / e['profile_ms']:.2f})"
        lines.append(f"{model}: execution {e['profile_ms']:.0f} ms profiled, {ms(real)} ms median on the server{ratio}")
    both = result.get("beside")
    if both:
        lines.append("execution / profile by what ran beside it (mean; real, simulated):")
        lines += [f"  {k:<42}{v:>6.2f}{both['sim'].get(k, float('nan')):>6.2f}" for k, v in both["real"].items()]
    minutes = result.get("by_minute")
    if minutes:
        ratios = " ".join(f"{m['real_exec_ms'] / m['sim_exec_ms']:.2f}" for m in minutes)
        lines.append(f"mean execution per request, real / simulated, minute by minute: {ratios}")
    heavy = result.get("heavy")
    if heavy:
        lines.append(
            "heavy (its only copy costly to evict) as the server measured each function at deploy, which "
            "the simulated scheduler is told: "
            + ", ".join(
                f"{m} {h['heavy']} of {h['functions']} (profile: {'heavy' if h['profile'] else 'light'})"
                for m, h in heavy.items()
            )
        )
    cold = result.get("cold_starts")
    if cold:
        lines.append("cold starts, real / simulated: " + ", ".join(f"{m} {r}/{s:.0f}" for m, (r, s) in cold.items()))
    bg = result.get("background_cores")
    if bg and any(bg.values()):
        lines.append(
            f"other processes kept {bg['replay']:.2f} of the host's cores busy during the replay (the load "
            f"generator, system services; {bg['idle']:.2f} while idle before it): the simulated devices "
            "and gateway share the rest"
        )
    n = result["functions"]

    def simulated(headline: dict[str, Any]) -> str:
        """A diagnostic simulation's side (`_headline`) as its line quotes it."""
        lo, hi = headline["sim_meeting_slo_range"]
        return (
            f"simulated {headline['sim_meeting_slo']}/{n} ({lo}-{hi}), "
            f"median p98 sim/real {ms(headline['median_p98_ratio'], 2)}"
        )

    lo, hi = result["sim_meeting_slo_range"]
    lines.append(
        f"functions meeting SLO: real {result['real_meeting_slo']}/{n}, simulated {result['sim_meeting_slo']}/{n} "
        f"(median of {len(result['sim_meeting_slo_counts'])} simulations, {lo}-{hi}) "
        f"(gap {100 * result['meeting_gap_share']:.1f}% of deployed, goal <= 5%); median p98 sim/real "
        f"{ms(result['median_p98_ratio'], 2)} (goal 0.75-1.25): {'AGREE' if result['agrees'] else 'DISAGREE'}"
    )
    level = result.get("halfway_speed")
    if level:
        trend = " ".join(f"{f:.2f}" for f in result["speed_trend"])
        lines.insert(
            -1,
            f"the host's speed minute by minute, on the line from the timings before the replay to those "
            f"after it (over their average): {trend}; at their average throughout: {simulated(level)}",
        )
    first = result.get("profile_before_only")
    if first:
        times = ", ".join(f"{m} {b:.0f} -> {a:.0f} ms" for m, (b, a) in first["exec_ms"].items())
        lines.insert(
            -1,
            f"execution times timed before the replay -> used (halfway to those timed after it): {times}; "
            f"with the times before it only: {simulated(first)}",
        )
    seen = result.get("at_server_speed")
    if seen:
        speeds = ", ".join(f"{m} {ms(v, 2)}" for m, v in seen["speed"].items())
        lines.append(
            f"diagnostic, at the speed the server showed (its executions alone / the profile's: {speeds}): "
            f"{simulated(seen)}"
        )
        wandering = seen.get("by_minute")
        if wandering and seen.get("drift"):
            lines.append(
                f"  and minute by minute (its lone runs' speed each minute / the whole replay's: "
                f"{' '.join(f'{f:.2f}' for f in seen['drift'])}): {simulated(wandering)}"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
