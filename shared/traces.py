"""Serverless-like request traces: generated, or read from the Azure Functions 2019 trace layout.

A trace is a matrix of per-minute invocation counts, one row per function, as in
the Azure Functions 2019 public trace (Shahrad et al., "Serverless in the Wild",
ATC '20), whose files have the columns HashOwner, HashApp, HashFunction, Trigger,
1, 2, ..., 1440. Both the simulator and the locust load test replay traces.

`generate` draws one with the two properties that make serverless traffic hard:
- heavy-tailed popularity: each function's mean rate is log-normal across
  functions (`sigma`; 1 gives a ~20x spread between the 10th and 90th
  percentile, 2 a ~170x spread), rescaled so the mean over functions is
  `mean_rate` requests per second;
- bursts within a function: each minute's rate is the mean times a gamma
  variate of mean 1 and coefficient of variation 2·`burstiness` (0: a steady
  Poisson process), and within a minute requests cluster around a few burst
  centres (`Trace.arrivals`).
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

AZURE_COLUMNS = ("HashOwner", "HashApp", "HashFunction", "Trigger")
MINUTES_PER_DAY = 1440


@dataclass(frozen=True)
class Trace:
    functions: list[str]
    counts: np.ndarray  # (functions, minutes) invocations per minute, int64

    @property
    def minutes(self) -> int:
        return int(self.counts.shape[1])

    def rates(self) -> np.ndarray:
        """Mean requests per second of each function over the trace."""
        return self.counts.sum(axis=1) / (60.0 * max(1, self.minutes))

    def total(self) -> int:
        return int(self.counts.sum())

    def arrivals(self, seed: int = 0, burst: float = 0.5) -> Iterator[tuple[float, int]]:
        """(seconds from the start, function index) in time order.

        Each minute's requests of a function are spread over the minute: a share
        `burst` of them cluster around 1-3 random burst centres (1 s spread), the rest
        arrive uniformly.
        """
        rng = np.random.default_rng(seed)
        for minute in range(self.minutes):
            times: list[np.ndarray] = []
            funcs: list[np.ndarray] = []
            column = self.counts[:, minute]
            for fi in np.nonzero(column)[0]:
                n = int(column[fi])
                clustered = rng.binomial(n, burst)
                centres = rng.uniform(0, 60, size=rng.integers(1, 4))
                t = np.concatenate(
                    [
                        rng.choice(centres, clustered) + rng.normal(0, 1.0, clustered),
                        rng.uniform(0, 60, n - clustered),
                    ]
                )
                times.append(np.clip(t, 0, np.nextafter(60, 0)) + 60 * minute)
                funcs.append(np.full(n, fi))
            if not times:
                continue
            t_all, f_all = np.concatenate(times), np.concatenate(funcs)
            order = np.argsort(t_all, kind="stable")
            for t, fi in zip(t_all[order], f_all[order], strict=True):
                yield float(t), int(fi)

    def scaled(self, factor: float, seed: int = 0) -> Trace:
        """Every rate times `factor` (stochastic rounding keeps the expected count exact)."""
        rng = np.random.default_rng(seed)
        x = self.counts * factor
        base = np.floor(x)
        counts = (base + (rng.random(x.shape) < x - base)).astype(np.int64)
        return Trace(list(self.functions), counts)

    def head(self, functions: int) -> Trace:
        return Trace(self.functions[:functions], self.counts[:functions].copy())


def generate(
    functions: int, minutes: int, mean_rate: float = 1.0, sigma: float = 1.0, burstiness: float = 0.5, seed: int = 0
) -> Trace:
    if functions < 1 or minutes < 1:
        raise ValueError("traces: functions and minutes must be >= 1")
    if mean_rate < 0 or sigma < 0 or not 0 <= burstiness <= 1:
        raise ValueError("traces: mean_rate and sigma must be >= 0, burstiness within [0, 1]")
    rng = np.random.default_rng(seed)
    rates = rng.lognormal(0.0, sigma, functions)
    rates *= mean_rate / rates.mean()
    per_minute = np.outer(rates * 60.0, np.ones(minutes))
    if burstiness > 0:
        cv = 2.0 * burstiness
        shape = 1.0 / cv**2
        per_minute *= rng.gamma(shape, 1.0 / shape, size=per_minute.shape)
    counts = rng.poisson(per_minute).astype(np.int64)
    return Trace([f"f{i:04d}" for i in range(functions)], counts)


def read_azure_csv(
    path: str | Path, functions: int | None = None, start_minute: int = 1, minutes: int | None = None
) -> Trace:
    """Per-minute counts of the first `functions` rows, minutes start_minute .. start_minute+minutes-1."""
    path = Path(path)
    names: list[str] = []
    rows: list[list[int]] = []
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or tuple(header[:4]) != AZURE_COLUMNS:
            raise ValueError(f"{path}: line 1: expected the columns {','.join(AZURE_COLUMNS)},1,2,...")
        available = len(header) - 4
        for j, col in enumerate(header[4:], 1):
            if col.strip() != str(j):
                raise ValueError(f"{path}: line 1, column {j + 4}: expected minute {j}, found {col!r}")
        first = start_minute - 1
        last = available if minutes is None else first + minutes
        if first < 0 or last > available or first >= last:
            raise ValueError(f"{path}: minutes {start_minute}..{last} asked for, the file has 1..{available}")
        for line, row in enumerate(reader, 2):
            if functions is not None and len(rows) >= functions:
                break
            if not row:
                continue
            if len(row) != len(header):
                raise ValueError(f"{path}: line {line}: {len(row)} columns, the header has {len(header)}")
            try:
                counts = [int(c) for c in row[4 + first : 4 + last]]
            except ValueError:
                bad = next(i for i, c in enumerate(row[4 + first : 4 + last]) if not c.strip().isdigit())
                raise ValueError(
                    f"{path}: line {line}, column {5 + first + bad}: expected a count, found {row[4 + first + bad]!r}"
                ) from None
            if any(c < 0 for c in counts):
                raise ValueError(f"{path}: line {line}: negative count")
            names.append(row[2])
            rows.append(counts)
    if not rows:
        raise ValueError(f"{path}: no function rows")
    return Trace(names, np.asarray(rows, dtype=np.int64))


def write_azure_csv(trace: Trace, path: str | Path) -> None:
    """The same layout, so a generated trace can be saved, inspected and replayed."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([*AZURE_COLUMNS, *range(1, trace.minutes + 1)])
        for name, row in zip(trace.functions, trace.counts, strict=True):
            w.writerow(["owner", "app", name, "http", *(int(c) for c in row)])
