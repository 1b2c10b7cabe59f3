"""Workloads for the simulator, single runs, and the density sweep (functions meeting SLO vs deployed).

A workload is N functions over the profile's models, assigned round-robin (or
from an explicit list), each with an SLO at `percentile`: one `slo_ms` for all, else
the workload's per-model `slos`, else `slo_factor` × its model's batch-1 execution
time, else the model's own `slo_ms` in the profile, else 5 × its execution time.
Its trace of arrivals is generated — shape "lognormal": heavy-tailed rates across
functions, bursty within each; shape "uniform": Torpor's evaluation workload, each
function's requests per minute uniform in rpm_low..rpm_high minute by minute, spread
evenly within the minute (see shared.traces) — or read from an Azure Functions 2019
per-minute CSV, its rows mapped onto the functions in order. A workload file is a
JSON object of Workload's fields (`load_workload`).
"""

from __future__ import annotations

import json
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from gateway.decisions import POLICIES, Policy
from gateway.sim.engine import SimFunction, Simulation
from gateway.sim.profile import HardwareProfile
from gateway.sim.profile import load as load_profile
from gateway.sim.summary import summarize
from shared import traces


@dataclass(frozen=True)
class Workload:
    functions: int
    minutes: int = 10
    mean_rate: float = 0.15  # requests/s per function, averaged over functions
    sigma: float = 1.0  # spread (log-normal) of rates across functions
    burstiness: float = 0.5
    slo_factor: float | None = None  # SLO = slo_factor × the model's batch-1 execution time
    slo_ms: float | None = None  # or one SLO for every function
    slos: tuple[tuple[str, float], ...] = ()  # or per model: ((model, ms), ...)
    percentile: float = 0.98
    models: tuple[str, ...] = ()  # () = every model of the profile, round-robin
    max_batch: int = 1
    drop_late: bool = False
    seed: int = 0
    trace: str | None = None  # an Azure-layout CSV instead of a generated trace
    population: int | None = None  # generate this many functions and keep the first `functions`
    nodes: int = 1  # a cluster of identical nodes
    placement: str = "cluster"  # "cluster": the cluster policy routes and places; "static": a fixed split
    hop_ms: float = 1.0  # cluster: a forward's added latency
    link_gbps: float = 1.25  # cluster: GB/s between nodes, for image fetches (10 Gbit/s)
    kill_node: int | None = None  # cluster: this node is lost at kill_at seconds
    kill_at: float = 0.0
    shape: str = "lognormal"  # generated trace: "lognormal" or "uniform" (Torpor's §7.3 workload)
    rpm_low: int = 5  # uniform shape: requests per minute per function, drawn each minute
    rpm_high: int = 30
    admit_utilization: float | None = None  # admission's bound: None = the policy's own, 0 = off

    def __post_init__(self) -> None:
        problems = [
            ("functions", self.functions >= 1, "an integer >= 1"),
            ("nodes", self.nodes >= 1, "an integer >= 1"),
            ("placement", self.placement in ("cluster", "static"), "cluster or static"),
            ("minutes", self.minutes >= 1, "an integer >= 1"),
            ("percentile", 0 < self.percentile < 1, "within (0, 1)"),
            ("shape", self.shape in SHAPES, f"one of {', '.join(SHAPES)}"),
            ("rpm_low/rpm_high", 0 <= self.rpm_low <= self.rpm_high, "0 <= rpm_low <= rpm_high"),
            ("slo_ms", self.slo_ms is None or self.slo_ms > 0, "a number of milliseconds > 0"),
            ("slo_factor", self.slo_factor is None or self.slo_factor > 0, "a number > 0"),
            ("slos", all(ms > 0 for _, ms in self.slos), "milliseconds > 0 per model"),
            (
                "admit_utilization",
                self.admit_utilization is None or self.admit_utilization >= 0,
                "a share of device time >= 0 (0: off)",
            ),
        ]
        for name, ok, expected in problems:
            if not ok:
                raise ValueError(f"workload: {name}: expected {expected}")


SHAPES = ("lognormal", "uniform")


def load_workload(path: str | Path, **overrides: Any) -> Workload:
    """A workload from a JSON file of Workload's fields; `overrides` win over the file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"workload {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"workload {path}: expected a JSON object of workload fields")
    data.pop("source", None)
    known = set(Workload.__dataclass_fields__)
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"workload {path}: unknown field(s) {unknown}; expected some of {sorted(known)}")
    slos = data.get("slos", {})
    if not isinstance(slos, dict) or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in slos.values()
    ):
        raise ValueError(f"workload {path}: slos must map a model to its SLO in milliseconds")
    data["slos"] = tuple((str(k), float(v)) for k, v in slos.items())
    if "models" in data:
        data["models"] = tuple(data["models"])
    try:
        return Workload(**{"functions": 200, **data, **overrides})
    except TypeError as exc:
        raise ValueError(f"workload {path}: {exc}") from None


def functions_for(profile: HardwareProfile, w: Workload) -> list[SimFunction]:
    names = list(w.models) or sorted(profile.models)
    unknown = [m for m in names if m not in profile.models]
    if unknown:
        raise ValueError(f"models: {unknown} not in profile {profile.name!r} ({sorted(profile.models)})")
    slos = dict(w.slos)
    unknown = sorted(set(slos) - set(profile.models))
    if unknown:
        raise ValueError(f"slos: {unknown} not in profile {profile.name!r} ({sorted(profile.models)})")
    out = []
    for i in range(w.functions):
        m = profile.models[names[i % len(names)]]
        if w.slo_ms is not None:
            slo = w.slo_ms
        elif m.name in slos:
            slo = slos[m.name]
        elif w.slo_factor is not None or m.slo_ms is None:
            slo = (w.slo_factor or 5.0) * m.exec_ms
        else:
            slo = m.slo_ms
        out.append(SimFunction(f"f{i:04d}", m, slo, w.percentile, w.max_batch, w.drop_late))
    return out


def trace_for(w: Workload) -> traces.Trace:
    if w.trace:
        t = traces.read_azure_csv(w.trace, functions=w.functions, minutes=w.minutes)
        if len(t.functions) < w.functions:
            raise ValueError(f"trace {w.trace}: {len(t.functions)} functions, {w.functions} asked for")
        return t
    # A sweep draws one population and deploys more and more of it, so every point
    # adds functions to the same traffic instead of drawing new traffic.
    n = max(w.population or 0, w.functions)
    if w.shape == "uniform":
        return traces.generate_uniform(n, w.minutes, w.rpm_low, w.rpm_high, w.seed).head(w.functions)
    return traces.generate(n, w.minutes, w.mean_rate, w.sigma, w.burstiness, w.seed).head(w.functions)


def policy_for(policy: str | Policy, w: Workload) -> str | Policy:
    """The named policy, with the workload's admission bound where the policy has admission."""
    if w.admit_utilization is None or not isinstance(policy, str) or POLICIES[policy].admit_utilization is None:
        return policy
    return replace(POLICIES[policy], admit_utilization=w.admit_utilization or None)


def simulate(profile: HardwareProfile, w: Workload, policy: str | Policy) -> list[Simulation]:
    """One simulation per node. With placement "static", functions are partitioned across
    nodes (no swapping between nodes), as a front end that routes each function to one node
    would; with "cluster", one merged run of the cluster policy (gateway/sim/cluster.py)."""
    functions, trace = functions_for(profile, w), trace_for(w)
    policy = policy_for(policy, w)
    if w.nodes > 1 and w.placement == "cluster":
        from gateway.sim.cluster import ClusterKnobs, ClusterSimulation

        knobs = ClusterKnobs(
            hop_ms=w.hop_ms, link_bytes_per_s=w.link_gbps * 1e9, kill_node=w.kill_node, kill_at=w.kill_at
        )
        cluster = ClusterSimulation(profile, policy, functions, w.nodes, w.seed, knobs)
        return [cluster.run(trace.arrivals(seed=w.seed)).merged()]
    runs = []
    for node in range(w.nodes):
        rows = list(range(node, len(functions), w.nodes))
        part = traces.Trace([trace.functions[i] for i in rows], trace.counts[rows])
        sim = Simulation(profile, policy, [functions[i] for i in rows], seed=w.seed + node)
        even = w.shape == "uniform" and not w.trace
        runs.append(sim.run(part.arrivals(seed=w.seed + node, even=even)))
    return runs


def summary(profile: HardwareProfile, w: Workload, policy: str) -> dict[str, Any]:
    sims = simulate(profile, w, policy)
    s = summarize(sims)
    s["nodes"] = w.nodes
    if hasattr(sims[0], "cluster"):
        s["cluster"] = sims[0].cluster
    s["slo_percentile"] = w.percentile
    s["workload"] = asdict(w)
    return s


DROP_LATE = "+drop_late"  # a curve name suffix: the same policy, every function with drop_late


def variant(name: str) -> tuple[str, bool]:
    """'torpor+drop_late' -> ('torpor', True)."""
    return (name.removesuffix(DROP_LATE), True) if name.endswith(DROP_LATE) else (name, False)


def _point(args: tuple[str, Workload, str]) -> dict[str, Any]:
    profile_ref, w, curve = args
    policy, drop_late = variant(curve)
    if drop_late:
        w = replace(w, drop_late=True)
    s = summary(load_profile(profile_ref), w, policy)
    s["policy"] = curve
    return {k: v for k, v in s.items() if k != "per_function"}


def density(
    profile_ref: str, base: Workload, counts: list[int], policies: list[str], jobs: int = 1
) -> dict[str, list[dict[str, Any]]]:
    """One simulation per (policy, function count); the workload is otherwise the same."""
    tasks = [(profile_ref, replace(base, functions=n, population=max(counts)), p) for p in policies for n in counts]
    if jobs > 1:
        with ProcessPoolExecutor(jobs) as pool:
            points = list(pool.map(_point, tasks))
    else:
        points = [_point(t) for t in tasks]
    curves: dict[str, list[dict[str, Any]]] = {p: [] for p in policies}
    for (_, _, policy), point in zip(tasks, points, strict=True):
        curves[policy].append(point)
    return curves


def write_json(obj: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1, default=_jsonable))
    return path


def _jsonable(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    raise TypeError(f"{type(o).__name__} is not JSON serializable")
