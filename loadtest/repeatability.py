"""The server against itself: replays of one trace by `loadtest.simreal`, side by side.

    python -m loadtest.repeatability simreal-a/ simreal-b/ [more/ ...]

simreal judges the simulation by how many functions meet their SLO, within 5% of those
deployed. Whether any prediction can be that close depends on how far the server's own
count moves between two replays of the very same trace on the same machine: with a few
dozen requests a function, a p98 is its slowest request or two, and which model is resident
when a burst comes, or which of two near-simultaneous requests is taken first, moves it.
This reads each run's OUT/comparison.json (written by simreal, with or without --again)
and prints, per function, each replay's p98 and verdict, then the count per replay, the
gap between every two replays as a share of the functions deployed (the same measure as
simreal's gap), and each replay's gap to its own simulation. Each replay is judged by the
SLOs it was deployed with (simreal sets them from the profile it measured that run).
"""

from __future__ import annotations

import argparse
import json
import sys
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np


def load_runs(dirs: list[str]) -> list[dict[str, Any]]:
    """Each run's comparison, checked to be a replay of the same functions and trace."""
    runs = []
    for d in dirs:
        path = Path(d) / "comparison.json"
        try:
            runs.append(json.loads(path.read_text()))
        except FileNotFoundError:
            raise SystemExit(f"repeatability: {path}: not found (run loadtest.simreal with --out {d} first)") from None
        except json.JSONDecodeError as exc:
            raise SystemExit(f"repeatability: {path}: not JSON ({exc})") from None
    first = _shape(runs[0])
    for d, run in zip(dirs[1:], runs[1:], strict=True):
        if _shape(run) != first:
            raise SystemExit(
                f"repeatability: {d} is not a replay of the trace of {dirs[0]}: its functions, models or "
                "simulated request counts differ (give runs of one simreal command: same --functions, "
                "--models, --minutes, --rate and --seed)"
            )
    return runs


def _shape(run: dict[str, Any]) -> list[tuple[str, str, int]]:
    # The simulated request counts come from the trace alone (the real ones can lose a request).
    return [(f["function"], f["model"], f["sim_requests"]) for f in run["per_function"]]


def compare(runs: list[dict[str, Any]]) -> dict[str, Any]:
    n = runs[0]["functions"]
    counts = [r["real_meeting_slo"] for r in runs]
    pairs = []
    for i, j in combinations(range(len(runs)), 2):
        a, b = runs[i]["per_function"], runs[j]["per_function"]
        both = list(zip(a, b, strict=True))
        ratios = [y["real_p98_ms"] / x["real_p98_ms"] for x, y in both if x["real_p98_ms"] and y["real_p98_ms"]]
        pairs.append(
            {
                "runs": [i, j],
                "gap_share": abs(counts[i] - counts[j]) / max(1, n),
                "verdicts_differing": sum(x["real_meets"] != y["real_meets"] for x, y in both),
                "median_p98_ratio": float(np.median(ratios)) if ratios else None,
            }
        )
    return {
        "functions": n,
        "real_meeting_slo": counts,
        "sim_meeting_slo": [r["sim_meeting_slo"] for r in runs],
        "sim_gap_share": [r["meeting_gap_share"] for r in runs],
        "pairs": pairs,
    }


def render(dirs: list[str], runs: list[dict[str, Any]], result: dict[str, Any]) -> str:
    names = [f"#{i + 1}" for i in range(len(runs))]
    lines = [f"{name}: {d}" for name, d in zip(names, dirs, strict=True)]
    head = f"{'function':<9}{'model':<11}{'requests':>9}"
    head += "".join(f"{'SLO ' + k:>9}{'p98 ' + k:>9}" for k in names) + "  meets"
    lines.append(head)
    for rows in zip(*(r["per_function"] for r in runs), strict=True):
        first = rows[0]
        line = f"{first['function']:<9}{first['model']:<11}{first['sim_requests']:>9}"
        for row in rows:
            p98 = "-" if row["real_p98_ms"] is None else f"{row['real_p98_ms']:.0f}"
            line += f"{row['slo_ms']:>9.0f}{p98:>9}"
        line += "  " + "/".join("yes" if row["real_meets"] else "no" for row in rows)
        lines.append(line)
    n = result["functions"]
    lines.append(
        "functions meeting SLO on the server: "
        + ", ".join(f"{k} {c}/{n}" for k, c in zip(names, result["real_meeting_slo"], strict=True))
        + "; simulated: "
        + ", ".join(f"{k} {c}/{n}" for k, c in zip(names, result["sim_meeting_slo"], strict=True))
    )
    for p in result["pairs"]:
        i, j = p["runs"]
        ratio = "-" if p["median_p98_ratio"] is None else f"{p['median_p98_ratio']:.2f}"
        lines.append(
            f"server {names[i]} against server {names[j]}: gap {100 * p['gap_share']:.1f}% of deployed, "
            f"{p['verdicts_differing']} verdicts differ, median p98 {names[j]}/{names[i]} {ratio}"
        )
    lines.append(
        "each server against its simulation: "
        + ", ".join(f"{k} {100 * g:.1f}%" for k, g in zip(names, result["sim_gap_share"], strict=True))
        + " of deployed (simreal's goal <= 5%)"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", metavar="OUT", help="simreal --out directories of one command")
    args = ap.parse_args(argv)
    if len(args.runs) < 2:
        raise SystemExit("repeatability: give at least two simreal --out directories")
    runs = load_runs(args.runs)
    result = compare(runs)
    print(render(args.runs, runs, result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
