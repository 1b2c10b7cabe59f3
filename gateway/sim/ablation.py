"""Which part of the policy buys what: the full policy against itself with one part taken away.

    python -m gateway.sim.ablation --functions 480 560 --minutes 10

Every row is the same simulated node, workload and seed (by default Torpor's own: the
paper-v100x4 profile and the paper workload); only the policy differs. Prints, per
function count, the functions meeting their SLO, the late requests and the device
utilization, and writes them as JSON with --out.
"""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

from gateway.decisions import POLICIES, Policy
from gateway.sim.engine import Simulation
from gateway.sim.profile import load as load_profile
from gateway.sim.run import functions_for, load_workload, trace_for
from gateway.sim.summary import summarize

FULL = POLICIES["torpor"]

# (name, what it takes away, the policy, whether free device memory is filled at deploy)
VARIANTS: list[tuple[str, str, Policy, bool]] = [
    ("torpor", "the full policy", FULL, True),
    ("no-warm-first", "a freeing device always serves the head of the order", replace(FULL, warm_first=False), True),
    (
        "no-spare",
        "plain earliest deadline first (no yielding by functions with misses to spare)",
        replace(FULL, spare_ms=0.0),
        True,
    ),
    (
        "order-rrc",
        "Torpor's RRC classes at a tuned threshold instead of the budget order",
        replace(FULL, order="rrc"),
        True,
    ),
    (
        "duplicates-never",
        "no duplicate may evict another model's only copy (Torpor §5.4)",
        replace(FULL, duplicates="never"),
        True,
    ),
    (
        "no-admission",
        "every function is served, however overloaded the node (no shedding)",
        replace(FULL, admit_utilization=None),
        True,
    ),
    ("no-segregate", "first fit from the bottom of the arena for every model", replace(FULL, segregate=False), True),
    ("no-preload", "models come onto devices only with their first request", FULL, False),
    ("no-prefetch", "no copies onto busy devices (and so no preload either)", replace(FULL, prefetch=False), False),
]


def run_one(args: tuple[str, str, int, int, int, str]) -> dict[str, Any]:
    profile_ref, workload_ref, functions, minutes, seed, variant = args
    name, _, policy, preload = next(v for v in VARIANTS if v[0] == variant)
    profile = load_profile(profile_ref)
    w = load_workload(workload_ref, functions=functions, minutes=minutes, seed=seed)
    sim = Simulation(profile, policy, functions_for(profile, w), seed=seed, preload=preload)
    sim.run(trace_for(w).arrivals(seed=seed, even=w.shape == "uniform"))
    s = summarize(sim)
    late = sum(sum(r.values()) for r in s["late_by_model"].values())
    util = sum(d["utilization"] for d in s["devices"]) / len(s["devices"])
    return {
        "variant": name,
        "functions": functions,
        "meeting": s["functions_meeting_slo"],
        "late": late,
        "requests": s["requests"],
        "utilization": round(util, 3),
        "missing_by_model": s["missing_by_model"],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m gateway.sim.ablation", description=__doc__.splitlines()[0])
    p.add_argument("--profile", default="paper-v100x4")
    p.add_argument("--workload", default=str(Path(__file__).parent / "workloads" / "paper.json"))
    p.add_argument("--functions", type=int, nargs="+", default=[480, 560])
    p.add_argument("--minutes", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--variants", nargs="+", default=[v[0] for v in VARIANTS], choices=[v[0] for v in VARIANTS])
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--out", type=Path)
    a = p.parse_args(argv)
    tasks = [(a.profile, a.workload, n, a.minutes, a.seed, v) for v in a.variants for n in a.functions]
    with ProcessPoolExecutor(a.jobs) as pool:
        rows = list(pool.map(run_one, tasks))
    print(f"{a.profile}, workload {Path(a.workload).stem}, {a.minutes}-minute runs, seed {a.seed}")
    print(f"{'variant':18}" + "".join(f"{n:>10} fns" for n in a.functions) + "   late requests, utilization")
    what = {v[0]: v[1] for v in VARIANTS}
    for v in a.variants:
        mine = [r for r in rows if r["variant"] == v]
        cells = "".join(f"{r['meeting']:>14}" for r in mine)
        extra = "  ".join(f"{r['late']} / {r['utilization']:.2f}" for r in mine)
        print(f"{v:18}{cells}   {extra}   ({what[v]})")
    if a.out:
        a.out.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
