"""loadtest.repeatability: replays of one trace, the server against itself."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loadtest.repeatability import compare, load_runs, main


def _run(tmp: Path, name: str, p98s: list[float | None], slo: float = 200.0, sim_ok: int = 2) -> str:
    rows = [
        {
            "function": f"f{i:03d}",
            "model": "resnet50",
            "slo_ms": slo,
            "real_requests": 10,
            "sim_requests": 10,
            "real_p98_ms": p,
            "sim_p98_ms": 150.0,
            "real_meets": p is not None and p <= slo,
            "sim_meets": True,
        }
        for i, p in enumerate(p98s)
    ]
    real_ok = sum(r["real_meets"] for r in rows)
    out = tmp / name
    out.mkdir()
    comparison = {
        "functions": len(rows),
        "real_meeting_slo": real_ok,
        "sim_meeting_slo": sim_ok,
        "meeting_gap_share": abs(real_ok - sim_ok) / len(rows),
        "per_function": rows,
    }
    (out / "comparison.json").write_text(json.dumps(comparison))
    return str(out)


def test_two_replays_of_one_trace_are_set_side_by_side(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    a = _run(tmp_path, "a", [100.0, 190.0, 250.0, None])
    b = _run(tmp_path, "b", [110.0, 210.0, 190.0, 300.0])
    result = compare(load_runs([a, b]))
    assert result["real_meeting_slo"] == [2, 2] and result["sim_meeting_slo"] == [2, 2]
    (pair,) = result["pairs"]
    # f001 and f002 swap verdicts: the counts agree while two verdicts differ.
    assert pair["gap_share"] == 0.0 and pair["verdicts_differing"] == 2
    assert pair["median_p98_ratio"] == pytest.approx(sorted([1.1, 210 / 190, 190 / 250])[1])
    assert main([a, b]) == 0
    printed = capsys.readouterr().out
    assert "server #1 against server #2: gap 0.0% of deployed, 2 verdicts differ" in printed


def test_three_replays_give_every_pair(tmp_path: Path) -> None:
    runs = [_run(tmp_path, n, p) for n, p in (("a", [100.0, 100.0]), ("b", [300.0, 100.0]), ("c", [300.0, 300.0]))]
    result = compare(load_runs(runs))
    assert [(p["runs"], p["gap_share"]) for p in result["pairs"]] == [([0, 1], 0.5), ([0, 2], 1.0), ([1, 2], 0.5)]


def test_runs_of_different_traces_are_refused(tmp_path: Path) -> None:
    a = _run(tmp_path, "a", [100.0, 100.0])
    b = _run(tmp_path, "b", [100.0, 100.0, 100.0])
    with pytest.raises(SystemExit, match="is not a replay of the trace of"):
        load_runs([a, b])
    with pytest.raises(SystemExit, match="not found"):
        load_runs([a, str(tmp_path / "missing")])
    with pytest.raises(SystemExit, match="at least two"):
        main([a])
