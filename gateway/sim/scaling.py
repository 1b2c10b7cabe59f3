"""Cluster scaling in simulation: K nodes against K × one node, static split against the cluster policy.

    python -m gateway.sim.scaling [--profile v100x4] [--per-node 480] [--nodes 6] [--minutes 5]

For each policy: one node with N functions, then K nodes with K·N functions of the same
population (a) split statically round-robin and (b) routed and placed by the cluster policy;
prints functions within SLO and the scaling ratio within-SLO(K nodes) / (K × within-SLO(1 node)).
The goal is ≥ 0.95. Then the cluster run once more with node 0 lost at a third of the trace.
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from typing import Any

from gateway.sim.profile import load
from gateway.sim.run import Workload, summary, variant


def _run(args: tuple[str, Workload, str]) -> dict[str, Any]:
    profile_ref, w, curve = args
    policy, drop_late = variant(curve)
    s = summary(load(profile_ref), replace(w, drop_late=w.drop_late or drop_late), policy)
    return {k: v for k, v in s.items() if k not in ("per_function", "devices")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="v100x4")
    ap.add_argument("--per-node", type=int, default=480)
    ap.add_argument("--nodes", type=int, default=6)
    ap.add_argument("--minutes", type=int, default=5)
    ap.add_argument("--policy", default="torpor,torpor+drop_late")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--no-static", action="store_true", help="skip the static split")
    ap.add_argument("--no-loss", action="store_true", help="skip the run that loses a node")
    args = ap.parse_args()
    k, n = args.nodes, args.per_node
    base = Workload(functions=n, minutes=args.minutes, population=k * n)
    cases = []
    for curve in args.policy.split(","):
        cases += [
            ("1 node", replace(base, functions=n), curve),
            (f"{k} nodes static", replace(base, functions=k * n, nodes=k, placement="static"), curve),
            (f"{k} nodes cluster", replace(base, functions=k * n, nodes=k), curve),
            (
                f"{k} nodes cluster, node 0 lost at {args.minutes * 20} s",
                replace(base, functions=k * n, nodes=k, kill_node=0, kill_at=args.minutes * 20.0),
                curve,
            ),
        ]
    cases = [
        c
        for c in cases
        if not (args.no_static and c[1].placement == "static" and c[1].nodes > 1)
        and not (args.no_loss and c[1].kill_node is not None)
    ]
    started = time.time()
    with ProcessPoolExecutor(args.jobs) as pool:
        results = list(pool.map(_run, [(args.profile, w, c) for _, w, c in cases]))
    print(time.strftime("simulated %Y-%m-%d %H:%M UTC", time.gmtime(started)), f"in {time.time() - started:.0f} s")
    print(f"{'policy':<18}{'run':<40}{'functions':>10}{'within SLO':>11}{'ratio':>8}  cluster")
    one = 0
    for (label, w, curve), s in zip(cases, results, strict=True):
        met = s["functions_meeting_slo"]
        if w.nodes == 1:
            one = met
        ratio = met / (w.nodes * one) if one else float("nan")
        extra = s.get("cluster", {})
        detail = ", ".join(f"{key} {v}" for key, v in extra.items()) if extra else "-"
        print(f"{curve:<18}{label:<40}{s['functions_with_requests']:>10}{met:>11}{ratio:>8.3f}  {detail}")
    print(f"ratio = within SLO / ({k} x one node's within SLO at {n} functions); the goal is >= 0.95")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
