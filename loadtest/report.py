"""The load test's report: locust's own statistics plus what only torpor knows (SLOs, cold starts).

Percentiles come from locust's stats CSV (`<prefix>_stats.csv`), throughput and
latency over time from its history CSV (`<prefix>_stats_history.csv`); the per-request
log of the locustfile adds SLO attainment and the cold-start fraction per function.
"""

from __future__ import annotations

import csv
import html
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only
import matplotlib.pyplot as plt  # noqa: E402


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _num(v: str | None) -> float | None:
    try:
        return float(v) if v not in (None, "", "N/A") else None
    except ValueError:
        return None


def build(out: Path, prefix: str, slos: dict[str, float], request_log: Path) -> dict[str, Any]:
    stats = _rows(out / f"{prefix}_stats.csv")
    history = _rows(out / f"{prefix}_stats_history.csv")
    log = _rows(request_log) if request_log.exists() else []
    per_fn: dict[str, dict[str, Any]] = {}
    for row in stats:
        name = row["Name"]
        if name == "Aggregated":
            continue
        mine = [r for r in log if r["function"] == name]
        ok = [r for r in mine if r["status"] == "200"]
        slo = slos.get(name)
        per_fn[name] = {
            "requests": int(row["Request Count"]),
            "failures": int(row["Failure Count"]),
            "p50_ms": _num(row.get("50%")),
            "p98_ms": _num(row.get("98%")),
            "p99_ms": _num(row.get("99%")),
            "slo_ms": slo,
            # A failed request missed its SLO; the log has every request locust counted.
            "slo_attainment": (
                sum(float(r["ms"]) <= slo for r in ok) / len(mine) if slo is not None and mine else None
            ),
            "cold_fraction": sum(r["cold"] == "1" for r in ok) / len(ok) if ok else None,
        }
    total = next((r for r in stats if r["Name"] == "Aggregated"), None)
    summary = {
        "requests": int(total["Request Count"]) if total else 0,
        "failures": int(total["Failure Count"]) if total else 0,
        "throughput_rps": _num(total.get("Requests/s")) if total else None,
        "functions": per_fn,
        "figures": _figures(history, out),
    }
    (out / "report.md").write_text(_markdown(summary))
    (out / "report.html").write_text(_html(summary))
    return summary


def _figures(history: list[dict[str, str]], out: Path) -> list[str]:
    agg = [r for r in history if r.get("Name") == "Aggregated"]
    if not agg:
        return []
    t0 = float(agg[0]["Timestamp"])
    t = [float(r["Timestamp"]) - t0 for r in agg]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot(t, [_num(r["Requests/s"]) or 0 for r in agg], label="requests/s")
    ax.plot(t, [_num(r["Failures/s"]) or 0 for r in agg], label="failures/s")
    ax.set(xlabel="seconds", ylabel="per second", title="Throughput")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "throughput.png", dpi=100)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for col in ("50%", "95%", "99%"):
        if col in agg[0]:
            ax.plot(t, [_num(r[col]) or 0 for r in agg], label=f"p{col.rstrip('%')}")
    ax.set(xlabel="seconds", ylabel="ms", title="Latency (all functions)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "latency.png", dpi=100)
    plt.close(fig)
    return ["throughput.png", "latency.png"]


def _fmt(v: Any, pct: bool = False) -> str:
    if v is None:
        return "-"
    return f"{v:.1%}" if pct else f"{v:g}"


def _table(summary: dict[str, Any]) -> list[list[str]]:
    head = ["function", "requests", "failures", "p50 ms", "p98 ms", "p99 ms", "SLO ms", "in SLO", "cold"]
    rows = [head]
    for name, f in sorted(summary["functions"].items()):
        rows.append(
            [
                name,
                str(f["requests"]),
                str(f["failures"]),
                _fmt(f["p50_ms"]),
                _fmt(f["p98_ms"]),
                _fmt(f["p99_ms"]),
                _fmt(f["slo_ms"]),
                _fmt(f["slo_attainment"], True),
                _fmt(f["cold_fraction"], True),
            ]
        )
    return rows


def _markdown(summary: dict[str, Any]) -> str:
    rows = _table(summary)
    lines = [
        "# torpor load test",
        "",
        f"{summary['requests']} requests, {summary['failures']} failed, "
        f"{_fmt(summary['throughput_rps'])} requests/s overall.",
        "",
        "| " + " | ".join(rows[0]) + " |",
        "|" + "---|" * len(rows[0]),
        *("| " + " | ".join(r) + " |" for r in rows[1:]),
        "",
        *(f"![{p}]({p})" for p in summary["figures"]),
        "",
    ]
    return "\n".join(lines)


def _html(summary: dict[str, Any]) -> str:
    rows = _table(summary)
    cells = ""
    for i, r in enumerate(rows):
        tag = "th" if i == 0 else "td"
        cells += "<tr>" + "".join(f"<{tag}>{html.escape(c)}</{tag}>" for c in r) + "</tr>"
    imgs = "".join(f'<p><img src="{html.escape(p)}"></p>' for p in summary["figures"])
    return (
        "<!doctype html><meta charset=utf-8><title>torpor load test</title>"
        "<style>td,th{padding:2px 8px;text-align:right}</style>"
        f"<h1>torpor load test</h1><p>{summary['requests']} requests, {summary['failures']} failed, "
        f"{_fmt(summary['throughput_rps'])} requests/s overall.</p><table>{cells}</table>{imgs}"
    )
