"""Execution timing for profiles: models timed in turn over a window, and their pooled spread."""

from __future__ import annotations

import math
import time

import torch

from shared.profiling import log_spread, runs_in_turn


class Sleeps(torch.nn.Module):
    """A model whose run takes a known time: what it sleeps."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(self.seconds)
        return x


def test_models_are_timed_in_turn_until_the_window_has_passed() -> None:
    x = [torch.zeros(1)]
    models = {"a": (Sleeps(0.002), x), "b": (Sleeps(0.006), x)}
    started = time.perf_counter()
    times = runs_in_turn(models, window_s=0.2, min_rounds=3)
    assert time.perf_counter() - started >= 0.2
    assert len(times["a"]) == len(times["b"]) >= 3, "one run of each per round"
    assert all(t >= 2.0 for t in times["a"]) and all(t >= 6.0 for t in times["b"])
    assert len(runs_in_turn(models, window_s=0.0, min_rounds=4)["a"]) == 4


def test_spread_is_pooled_around_each_models_own_median() -> None:
    # Each model's runs at its median and 10% either side: sigma of log(t / median) whatever the scale.
    times = {"fast": [0.9, 1.0, 1.1], "slow": [90.0, 100.0, 110.0]}
    expected = math.sqrt((2 * math.log(0.9) ** 2 + 2 * math.log(1.1) ** 2) / 6)
    assert math.isclose(log_spread(times), expected)
    assert log_spread({"a": [5.0, 5.0]}) == 0.0


class CountsThreads(torch.nn.Module):
    """Records the compute threads torch gives each run."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(torch.get_num_threads())
        return x


def test_models_are_timed_on_the_workers_threads_and_the_setting_restored() -> None:
    # A worker computes on --compute-threads; torch's default is one thread per core, so a
    # timing left at the default times another run than the server's.
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        model = CountsThreads()
        runs_in_turn({"m": (model, [torch.zeros(1)])}, window_s=0.0, min_rounds=2, threads=1)
        assert model.seen and set(model.seen) == {1}
        assert torch.get_num_threads() == 3
        model.seen.clear()
        runs_in_turn({"m": (model, [torch.zeros(1)])}, window_s=0.0, min_rounds=2)
        assert set(model.seen) == {3}, "no threads given: the process's own setting"
    finally:
        torch.set_num_threads(before)
