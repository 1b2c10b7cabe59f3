"""What a simulation run amounts to: per-function SLO attainment and p98, per-device work."""

from __future__ import annotations

from typing import Any

import numpy as np

from gateway.sim.engine import Simulation


def summarize(sims: Simulation | list[Simulation]) -> dict[str, Any]:
    """One node's run, or several nodes' runs of one cluster taken together."""
    nodes = sims if isinstance(sims, list) else [sims]
    sim = nodes[0]
    duration = max(max(s.end for s in nodes), 1e-9)
    functions = []
    meeting = requested = 0
    all_latencies: list[float] = []
    dropped = 0
    reasons: dict[str, dict[str, int]] = {}  # model -> reason -> late requests
    pairs = [(f, t) for s in nodes for f, t in zip(s.functions, s.tallies, strict=True)]
    for f, t in pairs:
        n = len(t.latencies_ms) + t.dropped
        lat = np.asarray(t.latencies_ms)
        on_time = int((lat <= f.slo_ms).sum())
        # A dropped request never came back: it counts as infinitely late (nearest-rank p98).
        full = np.sort(np.concatenate([lat, np.full(t.dropped, np.inf)]))
        p98 = float(full[max(0, int(np.ceil(0.98 * n)) - 1)]) if n else None
        attainment = on_time / n if n else None
        ok = attainment is not None and attainment >= f.percentile
        meeting += ok
        requested += n > 0
        dropped += t.dropped
        all_latencies.extend(t.latencies_ms)
        by_model = reasons.setdefault(f.model.name, {})
        for reason, count in t.late.items():
            by_model[reason] = by_model.get(reason, 0) + count
        functions.append(
            {
                "name": f.name,
                "model": f.model.name,
                "slo_ms": f.slo_ms,
                "requests": n,
                "dropped": t.dropped,
                "attainment": attainment,
                "p98_ms": p98 if p98 is None or np.isfinite(p98) else None,
                "meets_slo": ok,
                "late": dict(sorted(t.late.items())),
                "swaps": dict(t.swaps),
                "splits": t.splits,
            }
        )
    lat_all = np.asarray(all_latencies)
    return {
        "policy": sim.policy,
        "profile": sim.profile.name,
        "nodes": len(nodes),
        "functions": len(pairs),
        "functions_with_requests": requested,
        "functions_meeting_slo": meeting,
        "fraction_meeting_slo": meeting / requested if requested else None,
        "requests": int(sum(len(t.latencies_ms) + t.dropped for _, t in pairs)),
        "served": int(lat_all.size),
        "dropped": dropped,
        "latency_ms": _percentiles(lat_all),
        "late_by_model": {m: dict(sorted(r.items())) for m, r in sorted(reasons.items()) if r},
        "missing_by_model": _missing(functions),
        "swaps_by_model": _swaps(functions),
        "splits_by_model": _splits(functions),
        "simulated_seconds": round(duration, 3),
        "devices": [
            {
                "device": i,
                "utilization": round(d.busy_s / duration, 4),
                "runs": d.runs,
                "swaps": d.swaps,
                "swap_bytes": d.swap_bytes,
                "evictions": d.evictions,
            }
            for i, d in enumerate(d for s in nodes for d in s.devices)
        ],
        "per_function": functions,
    }


def _missing(functions: list[dict[str, Any]]) -> dict[str, int]:
    """Functions not meeting their SLO, by model."""
    out: dict[str, int] = {}
    for f in functions:
        if f["requests"] and not f["meets_slo"]:
            out[f["model"]] = out.get(f["model"], 0) + 1
    return dict(sorted(out.items()))


def _swaps(functions: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Swap-ins by model and source (host or peer)."""
    out: dict[str, dict[str, int]] = {}
    for f in functions:
        row = out.setdefault(f["model"], {"host": 0, "peer": 0})
        for k, v in f["swaps"].items():
            row[k] += v
    return dict(sorted(out.items()))


def _splits(functions: list[dict[str, Any]]) -> dict[str, int]:
    """Cold starts split across devices (pipeline-parallel), by model; models with none left out."""
    out: dict[str, int] = {}
    for f in functions:
        if f["splits"]:
            out[f["model"]] = out.get(f["model"], 0) + f["splits"]
    return dict(sorted(out.items()))


def _percentiles(lat: np.ndarray) -> dict[str, float | None]:
    if lat.size == 0:
        return {"p50": None, "p98": None, "p99": None}
    p50, p98, p99 = np.percentile(lat, [50, 98, 99])
    return {"p50": round(float(p50), 3), "p98": round(float(p98), 3), "p99": round(float(p99), 3)}
