"""Generated and Azure-layout traces."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from shared.traces import generate, read_azure_csv, write_azure_csv


def test_generation_is_deterministic_per_seed() -> None:
    a, b, c = generate(50, 20, seed=1), generate(50, 20, seed=1), generate(50, 20, seed=2)
    assert (a.counts == b.counts).all() and not (a.counts == c.counts).all()
    assert list(a.arrivals(seed=3)) == list(b.arrivals(seed=3))


def test_rates_are_heavy_tailed_across_functions() -> None:
    t = generate(500, 60, mean_rate=1.0, sigma=2.0, burstiness=0.0, seed=0)
    per = np.sort(t.counts.sum(axis=1))[::-1]
    assert per[:50].sum() > 0.4 * per.sum(), "the top 10% of functions get most requests"
    assert t.rates().mean() == pytest.approx(1.0, rel=0.25)


def test_burstiness_raises_the_minute_to_minute_spread() -> None:
    def cv(burstiness: float) -> float:
        c = generate(1, 600, mean_rate=2.0, sigma=0.0, burstiness=burstiness, seed=4).counts[0]
        return float(c.std() / c.mean())

    assert cv(0.0) < 0.2 < cv(0.5) < cv(1.0)


def test_arrivals_are_sorted_inside_their_minute_and_keep_the_counts() -> None:
    t = generate(10, 5, mean_rate=0.5, seed=2)
    arrivals = list(t.arrivals(seed=1))
    times = [a for a, _ in arrivals]
    assert times == sorted(times) and len(arrivals) == t.total()
    counts = np.zeros_like(t.counts)
    for when, fi in arrivals:
        counts[fi, int(when // 60)] += 1
    assert (counts == t.counts).all()


def test_azure_csv_round_trip_and_windows(tmp_path: Path) -> None:
    t = generate(7, 30, seed=5)
    path = tmp_path / "trace.csv"
    write_azure_csv(t, path)
    back = read_azure_csv(path)
    assert back.functions == t.functions and (back.counts == t.counts).all()
    part = read_azure_csv(path, functions=3, start_minute=11, minutes=5)
    assert (part.counts == t.counts[:3, 10:15]).all()
    assert (t.scaled(2.0).counts.sum() / t.counts.sum()) == pytest.approx(2.0, rel=0.05)


@pytest.mark.parametrize(
    "text, message",
    [
        ("a,b,c\n", "line 1"),
        ("HashOwner,HashApp,HashFunction,Trigger,1,3\n", "column 6"),
        ("HashOwner,HashApp,HashFunction,Trigger,1,2\no,a,f,http,1\n", "line 2: 5 columns"),
        ("HashOwner,HashApp,HashFunction,Trigger,1,2\no,a,f,http,1,x\n", "line 2, column 6"),
    ],
)
def test_malformed_csv_names_line_and_column(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        read_azure_csv(path)
