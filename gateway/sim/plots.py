"""The simulator's figures, as PNG files (matplotlib, no display needed)."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no screen on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def run_figures(summary: dict[str, Any], out: Path) -> list[Path]:
    """Per-function SLO attainment and p98, and per-device work, of one simulation run."""
    paths = []
    per = summary["per_function"]
    att = np.sort([f["attainment"] for f in per if f["attainment"] is not None])
    fig, ax = plt.subplots(figsize=(6, 4))
    if att.size:
        ax.plot(np.arange(1, att.size + 1) / att.size, att, drawstyle="steps-post")
    ax.axhline(_target(summary), color="grey", linestyle=":", label="SLO percentile")
    ax.set(xlabel="share of functions", ylabel="SLO attainment", title=_title(summary), ylim=(-0.02, 1.02))
    ax.legend(loc="lower right")
    paths.append(_save(fig, out / "attainment.png"))

    p98 = [f["p98_ms"] / f["slo_ms"] for f in per if f["p98_ms"] is not None]
    fig, ax = plt.subplots(figsize=(6, 4))
    if p98:
        ax.hist(np.clip(p98, 0, 5), bins=50)
    ax.axvline(1.0, color="red", linestyle="--", label="p98 = SLO")
    ax.set(xlabel="p98 latency ÷ SLO (clipped at 5)", ylabel="functions", title=_title(summary))
    ax.legend()
    paths.append(_save(fig, out / "p98.png"))

    devs = summary["devices"]
    fig, ax = plt.subplots(figsize=(6, 4))
    x = np.arange(len(devs))
    ax.bar(x - 0.2, [d["utilization"] for d in devs], 0.4, label="utilization")
    ax2 = ax.twinx()
    ax2.bar(x + 0.2, [(d["swap_bytes"]["host"] + d["swap_bytes"]["peer"]) / 1e9 for d in devs], 0.4, color="C1")
    ax.set(xlabel="device", ylabel="utilization", xticks=x, title=_title(summary))
    ax2.set_ylabel("GB swapped in (orange)")
    paths.append(_save(fig, out / "devices.png"))
    return paths


def density_figure(curves: dict[str, list[dict[str, Any]]], title: str, out: Path) -> Path:
    """Functions meeting their SLO against functions deployed, one line per policy."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    top = 0
    for policy, points in curves.items():
        xs = [p["functions"] for p in points]
        ys = [p["functions_meeting_slo"] for p in points]
        top = max(top, *xs)
        ax.plot(xs, ys, marker="o", markersize=3, label=policy)
    ax.plot([0, top], [0, top], color="grey", linestyle=":", label="all functions")
    ax.set(xlabel="functions deployed", ylabel="functions meeting their SLO", title=textwrap.fill(title, 70))
    ax.legend()
    ax.grid(alpha=0.3)
    return _save(fig, out)


def _target(summary: dict[str, Any]) -> float:
    return float(summary.get("slo_percentile", 0.98))


def _title(summary: dict[str, Any]) -> str:
    return f"{summary['policy']}: {summary['functions']} functions on {summary['profile']}"


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
