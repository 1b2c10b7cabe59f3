"""Generated and Azure-layout traces."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from shared.traces import Trace, generate, read_azure_csv, write_azure_csv

SAMPLE = Path(__file__).parents[2] / "loadtest" / "traces" / "sample-azure.csv"


def test_generation_is_deterministic_per_seed() -> None:
    a, b, c = generate(50, 20, seed=1), generate(50, 20, seed=1), generate(50, 20, seed=2)
    assert (a.counts == b.counts).all() and not (a.counts == c.counts).all()
    assert a.functions == [f"f{i:04d}" for i in range(50)] and a.counts.dtype == np.int64
    assert list(a.arrivals(seed=3)) == list(b.arrivals(seed=3))
    assert list(a.arrivals(seed=3)) != list(a.arrivals(seed=4))


def test_rates_are_heavy_tailed_across_functions() -> None:
    t = generate(500, 60, mean_rate=1.0, sigma=2.0, burstiness=0.0, seed=0)
    per = np.sort(t.counts.sum(axis=1))[::-1]
    assert per[:50].sum() > 0.5 * per.sum(), "the top 10% of functions get most requests"
    assert t.rates().mean() == pytest.approx(1.0, rel=0.05), "normalised to mean_rate over functions"
    flat = generate(500, 60, mean_rate=1.0, sigma=0.0, burstiness=0.0, seed=0)
    top_flat = np.sort(flat.counts.sum(axis=1))[::-1][:50].sum() / flat.total()
    assert top_flat < 0.12, "sigma=0: every function has the same rate"


def test_burstiness_raises_the_minute_to_minute_spread() -> None:
    def cv(burstiness: float) -> float:
        c = generate(1, 600, mean_rate=2.0, sigma=0.0, burstiness=burstiness, seed=4).counts[0]
        return float(c.std() / c.mean())

    # 120 requests a minute: a steady Poisson process has a CV of about 1/sqrt(120)
    assert cv(0.0) < 0.2 < cv(0.25) < cv(0.5) < cv(1.0)
    assert cv(0.5) == pytest.approx(1.0, rel=0.2), "the gamma modulation's CV is 2 x burstiness"


def test_arrivals_are_sorted_inside_their_minute_and_keep_the_counts() -> None:
    t = generate(10, 5, mean_rate=0.5, seed=2)
    arrivals = list(t.arrivals(seed=1))
    times = [a for a, _ in arrivals]
    assert times == sorted(times) and len(arrivals) == t.total()
    counts = np.zeros_like(t.counts)
    for when, fi in arrivals:
        counts[fi, int(when // 60)] += 1
    assert (counts == t.counts).all()


def test_bursts_near_a_minute_boundary_stay_inside_their_minute() -> None:
    # Many clustered requests: some burst centres lie within a second of the minute's end.
    t = Trace(["a"], np.full((1, 300), 400, dtype=np.int64))
    times = [when for when, _ in t.arrivals(seed=0, burst=1.0)]
    per_minute = Counter(int(when // 60) for when in times)
    assert all(per_minute[m] == 400 for m in range(300))
    # The spill is reflected back into the minute, not stacked on its first or last instant:
    # a real server orders same-instant requests by chance, the simulation by function.
    assert len(set(times)) == len(times)
    offsets = np.array(times) % 60
    assert (offsets < 0.5).sum() > 0 and (offsets > 59.5).sum() > 0, "the edges still get their bursts"


def test_arrivals_cluster_with_burst() -> None:
    def busiest_second_share(burst: float) -> float:
        t = Trace(["a"], np.full((1, 20), 600, dtype=np.int64))
        per_second = Counter(int(when) for when, _ in t.arrivals(seed=0, burst=burst))
        return max(per_second.values()) / 600

    assert busiest_second_share(0.0) < 0.05 < busiest_second_share(1.0)


def test_scaled_and_head() -> None:
    t = generate(40, 30, seed=5)
    assert t.scaled(2.0).total() / t.total() == pytest.approx(2.0, rel=0.02)
    assert t.scaled(0.1).total() / t.total() == pytest.approx(0.1, rel=0.1)
    assert (t.scaled(0.3).counts == t.scaled(0.3).counts).all(), "fixed seed"
    assert (t.scaled(1.0).counts == t.counts).all()
    h = t.head(3)
    assert h.functions == t.functions[:3] and (h.counts == t.counts[:3]).all()
    assert repr(h) == f"Trace(3 functions x 30 minutes, {h.total()} invocations)"
    assert t.rates()[0] == pytest.approx(t.counts[0].sum() / (30 * 60))


def test_a_trace_checks_its_shape() -> None:
    with pytest.raises(ValueError, match="shape"):
        Trace(["a", "b"], np.zeros((3, 4), dtype=np.int64))
    with pytest.raises(ValueError, match="negative"):
        Trace(["a"], np.array([[1, -1]]))


def test_azure_csv_round_trip_and_windows(tmp_path: Path) -> None:
    t = generate(7, 30, seed=5)
    path = tmp_path / "trace.csv"
    write_azure_csv(t, path)
    back = read_azure_csv(path)
    assert back.functions == t.functions and (back.counts == t.counts).all()
    part = read_azure_csv(path, functions=3, start_minute=11, minutes=5)
    assert part.functions == t.functions[:3] and (part.counts == t.counts[:3, 10:15]).all()


def test_the_shipped_sample_is_a_generated_trace() -> None:
    sample = read_azure_csv(SAMPLE)
    expected = generate(20, 30, mean_rate=0.5, sigma=1.0, burstiness=0.5, seed=0)
    assert sample.functions == expected.functions and (sample.counts == expected.counts).all()


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "line 1: expected the columns"),
        ("a,b,c\n", "line 1: expected the columns"),
        ("HashOwner,HashApp,HashFunction,Trigger,1,3\n", "line 1, column 6: expected minute 2"),
        ("HashOwner,HashApp,HashFunction,Trigger,1,2\n", "no function rows"),
        ("HashOwner,HashApp,HashFunction,Trigger,1,2\no,a,f,http,1\n", "line 2: 5 columns"),
        ("HashOwner,HashApp,HashFunction,Trigger,1,2\no,a,f,http,1,x\n", "line 2, column 6: expected a count"),
        ("HashOwner,HashApp,HashFunction,Trigger,1,2\no,a,f,http,1,2\no,a,g,http,-3,2\n", "line 3, column 5"),
        ("HashOwner,HashApp,HashFunction,Trigger,1,2\no,a,f,http,1.5,2\n", "line 2, column 5"),
    ],
)
def test_malformed_csv_names_file_line_and_column(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match=message) as err:
        read_azure_csv(path)
    assert str(path) in str(err.value)


def test_unreadable_csv_and_bad_windows(tmp_path: Path) -> None:
    binary = tmp_path / "trace.csv"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ValueError, match="not a text CSV"):
        read_azure_csv(binary)
    good = tmp_path / "good.csv"
    write_azure_csv(generate(2, 10), good)
    with pytest.raises(ValueError, match=r"minutes 5\.\.14 asked for, the file has 1\.\.10"):
        read_azure_csv(good, start_minute=5, minutes=10)
