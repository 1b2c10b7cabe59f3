"""simreal's reading of the host's speed: from the server's own runs (lone runs, minute by minute),
and the course between the timings before and after a replay."""

from __future__ import annotations

from dataclasses import replace

import pytest

from gateway.sim.engine import SimFunction
from gateway.sim.profile import load
from loadtest.simreal import Run, drift_by_minute, lone_runs, speed_trend


def test_lone_runs_are_the_warm_ones_nothing_overlapped() -> None:
    runs = [
        Run(0.0, 1.0, "a", False, 1.0),  # alone
        Run(2.0, 3.0, "a", False, 1.1),  # overlapped by the next
        Run(2.5, 3.5, "b", False, 1.2),
        Run(5.0, 6.0, "a", True, 1.3),  # alone but cold: its execution waited for its copy
    ]
    assert lone_runs(runs) == [runs[0]]


def test_drift_is_each_minutes_lone_runs_over_their_models_whole_replay() -> None:
    # Model a runs at 1.0 x the profile in minute 0 and 1.2 x in minute 2; b at 2.0 x then 2.4 x:
    # the host slowed by 20% in minute 2 for both; minute 1 has no lone run.
    runs = sorted(
        [Run(10.0 * i, 10.0 * i + 1, "a", False, 1.0) for i in range(3)]
        + [Run(10.0 * i + 5, 10.0 * i + 6, "b", False, 2.0) for i in range(3)]
        + [Run(120.0 + 10 * i, 121.0 + 10 * i, "a", False, 1.2) for i in range(3)]
        + [Run(125.0 + 10 * i, 126.0 + 10 * i, "b", False, 2.4) for i in range(3)]
    )
    drift = drift_by_minute(lone_runs(runs), {"a": 1.1, "b": 2.2}, runs[0].start)
    assert drift == pytest.approx((1.0 / 1.1, 1.0, 1.2 / 1.1), rel=1e-3)
    assert drift_by_minute([], {}, 0.0) == ()


def test_the_speed_trend_is_the_line_between_the_timings_over_their_average() -> None:
    profile = load("cpu2-measured")
    before = [SimFunction(f"f{i}", profile.models[m], 100.0) for i, m in enumerate(["resnet18", "resnet50"] * 2)]
    # Both models timed 20% slower after the replay than before it.
    after = replace(
        profile,
        models={
            m: replace(p, exec_ms=1.2 * p.exec_ms) if m in ("resnet18", "resnet50") else p
            for m, p in profile.models.items()
        },
    )
    # A 4-minute replay between two 1-minute timings: each stands half a minute off its edge, so
    # minute i's middle lies (i + 1) / 5 of the way from one to the other.
    trend = speed_trend(before, after, 4, 1)
    assert trend == pytest.approx([(1 + 0.2 * (i + 1) / 5) / 1.1 for i in range(4)], rel=1e-3)
    assert sum(trend) / 4 == pytest.approx(1.0, abs=0.01)  # about the average the simulation's times are
    # A partial minute is a minute; a host as fast after as before has no course.
    assert len(speed_trend(before, after, 2.5, 1)) == 3
    assert speed_trend(before, profile, 4, 1) == (1.0,) * 4
    assert speed_trend(before, replace(profile, models={}), 4, 1) == ()
