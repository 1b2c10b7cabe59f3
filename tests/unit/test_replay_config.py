"""The locust replay's configuration, read from its TORPOR_* variables."""

from __future__ import annotations

import pytest

from loadtest.replay import ReplayConfig


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
