"""The locust replay's configuration, read from its TORPOR_* variables."""

from __future__ import annotations

import numpy as np
import pytest

from loadtest.replay import Replay, ReplayConfig, load_trace


def test_the_request_encoding_is_read_checked_and_passed_on() -> None:
    assert ReplayConfig.from_env({}).encoding == "json"
    cfg = ReplayConfig.from_env({"TORPOR_ENCODING": "binary", "TORPOR_RATE": "2"})
    assert (cfg.encoding, cfg.rate) == ("binary", 2.0)
    assert ReplayConfig.from_env(cfg.to_env()) == cfg  # what a locust subprocess reads back
    with pytest.raises(ValueError, match="TORPOR_ENCODING: expected one of json, binary, got 'base64'"):
        ReplayConfig.from_env({"TORPOR_ENCODING": "base64"})


def test_a_bad_number_names_its_variable() -> None:
    with pytest.raises(ValueError, match="TORPOR_RATE: expected float, got 'fast'"):
        ReplayConfig.from_env({"TORPOR_RATE": "fast"})
    with pytest.raises(ValueError, match="TORPOR_BURSTINESS: 2.0 is out of range"):
        ReplayConfig.from_env({"TORPOR_BURSTINESS": "2"})


def test_the_uniform_shape_replays_torpors_workload_evenly() -> None:
    cfg = ReplayConfig.from_env({"TORPOR_SHAPE": "uniform", "TORPOR_RPM": "6:12", "TORPOR_MINUTES": "3"})
    assert (cfg.shape, cfg.rpm, cfg.even) == ("uniform", (6, 12), True)
    assert ReplayConfig.from_env(cfg.to_env()) == cfg
    trace = load_trace(cfg, 4)
    assert trace.counts.shape == (4, 3) and 6 <= trace.counts.min() and trace.counts.max() <= 12
    targets = [{"name": f"fn{i}", "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2]}]} for i in range(4)]
    replay = Replay(trace, targets, cfg.seed, even=cfg.even)
    times: dict[str, list[float]] = {}
    while (a := replay.claim()) is not None:
        times.setdefault(a.function, []).append(a.at)
    for fi, name in enumerate(("fn0", "fn1", "fn2", "fn3")):
        first_minute = [t for t in times[name] if t < 60]
        assert len(first_minute) == trace.counts[fi, 0]
        gaps = np.diff(first_minute)
        assert np.allclose(gaps, 60 / len(first_minute))  # evenly spaced, no bursts


def test_the_lognormal_shape_is_the_default_and_a_bad_shape_or_range_is_named() -> None:
    assert (ReplayConfig.from_env({}).shape, ReplayConfig.from_env({}).even) == ("lognormal", False)
    with pytest.raises(ValueError, match="TORPOR_SHAPE: expected one of lognormal, uniform, got 'flat'"):
        ReplayConfig.from_env({"TORPOR_SHAPE": "flat"})
    with pytest.raises(ValueError, match="TORPOR_RPM: expected LOW:HIGH requests per minute, e.g. 5:30, got '30'"):
        ReplayConfig.from_env({"TORPOR_RPM": "30"})
    with pytest.raises(ValueError, match="TORPOR_RPM: expected 0 <= LOW <= HIGH"):
        ReplayConfig.from_env({"TORPOR_RPM": "30:5"})
