"""Serverless-like request traces: generated, or read from the Azure Functions 2019 trace layout.

A trace is a matrix of per-minute invocation counts, one row per function, as in
the Azure Functions 2019 public trace (Shahrad et al., "Serverless in the Wild",
ATC '20), whose files have the columns HashOwner, HashApp, HashFunction, Trigger,
1, 2, ..., 1440. Both the simulator and the locust load test replay traces:
`Trace.arrivals` turns the counts into request timestamps.

`generate` draws one with the two properties that make serverless traffic hard:
heavy-tailed popularity across functions and bursts within a function.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

AZURE_COLUMNS = ("HashOwner", "HashApp", "HashFunction", "Trigger")
# The latest time placed inside a minute. Far enough below 60 s that adding the
# minute's offset (up to a day of seconds) cannot round the sum into the next minute.
_LAST_IN_MINUTE = 60.0 - 1e-6


@dataclass(frozen=True)
class Trace:
    functions: list[str]
    counts: np.ndarray  # (functions, minutes) invocations per minute, int64

    def __post_init__(self) -> None:
        counts = np.asarray(self.counts)
        if counts.ndim != 2 or counts.shape[0] != len(self.functions):
            raise ValueError(f"traces: counts of shape {counts.shape} for {len(self.functions)} functions")
        if counts.size and counts.min() < 0:
            raise ValueError("traces: negative invocation count")
        object.__setattr__(self, "counts", counts.astype(np.int64, copy=False))

    def __repr__(self) -> str:
        return f"Trace({len(self.functions)} functions x {self.minutes} minutes, {self.total()} invocations)"

    @property
    def minutes(self) -> int:
        return int(self.counts.shape[1])

    def rates(self) -> np.ndarray:
        """Mean requests per second of each function over the trace."""
        return self.counts.sum(axis=1) / (60.0 * max(1, self.minutes))

    def total(self) -> int:
        return int(self.counts.sum())

    def arrivals(self, seed: int = 0, burst: float = 0.5, even: bool = False) -> Iterator[tuple[float, int]]:
        """(seconds from the start, function index) in time order, lazily, minute by minute.

        Each minute's count of a function is placed inside that minute, [60·m, 60·m + 60):
        a share `burst` of the requests (binomial) cluster around 1-3 burst centres drawn
        uniformly in the minute, with a normal spread of 1 s (reflected at the minute's
        edges, see `_fold_into_minute`); the rest arrive uniformly. burst=0 gives a
        Poisson-like spread, burst=1 only clusters.
        even=True spreads them evenly instead, n requests 60/n s apart from a random
        phase (Torpor's evaluation workload). Deterministic for a seed.
        """
        if not 0 <= burst <= 1:
            raise ValueError(f"traces: burst must be within [0, 1], got {burst}")
        if even:
            yield from self._even(seed)
            return
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
                times.append(_fold_into_minute(t) + 60 * minute)
                funcs.append(np.full(n, fi))
            if not times:
                continue
            t_all, f_all = np.concatenate(times), np.concatenate(funcs)
            order = np.argsort(t_all, kind="stable")
            for t, fi in zip(t_all[order], f_all[order], strict=True):
                yield float(t), int(fi)

    def _even(self, seed: int) -> Iterator[tuple[float, int]]:
        rng = np.random.default_rng(seed)
        for minute in range(self.minutes):
            column = self.counts[:, minute]
            fis = np.nonzero(column)[0]
            if not fis.size:
                continue
            n = column[fis]
            gaps = 60.0 / n
            phase = rng.uniform(0, 1, fis.size) * gaps
            f_all = np.repeat(fis, n)
            k = np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n)
            t_all = np.minimum(np.repeat(phase, n) + k * np.repeat(gaps, n), _LAST_IN_MINUTE) + 60 * minute
            order = np.argsort(t_all, kind="stable")
            for t, fi in zip(t_all[order], f_all[order], strict=True):
                yield float(t), int(fi)

    def scaled(self, factor: float, seed: int = 0) -> Trace:
        """Every rate times `factor`; stochastic rounding (fixed `seed`) keeps each expected count exact."""
        if factor < 0:
            raise ValueError(f"traces: scale factor must be >= 0, got {factor}")
        rng = np.random.default_rng(seed)
        x = self.counts * factor
        base = np.floor(x)
        counts = (base + (rng.random(x.shape) < x - base)).astype(np.int64)
        return Trace(list(self.functions), counts)

    def head(self, functions: int) -> Trace:
        """The first `functions` functions (all of them if there are fewer)."""
        return Trace(self.functions[:functions], self.counts[:functions].copy())


def _fold_into_minute(t: np.ndarray) -> np.ndarray:
    """Offsets reflected at 0 and 60 s until they lie inside the minute.

    A burst centred near a minute's edge spills past it. Clipping the spill would stack
    it on one instant (the minute's first or last), and same-instant requests are ordered
    by chance on a real server but by function in the simulation; reflecting keeps the
    burst's spread and its requests apart, and keeps the minute's count.
    """
    folded = np.abs((t + 60.0) % 120.0 - 60.0)  # a triangle wave: 0..60 up, 60..120 back down
    return np.minimum(folded, _LAST_IN_MINUTE)


def generate(
    functions: int, minutes: int, mean_rate: float = 1.0, sigma: float = 2.0, burstiness: float = 0.5, seed: int = 0
) -> Trace:
    """A synthetic trace of `functions` functions named f0000, f0001, ... over `minutes` minutes.

    - mean_rate: requests per second per function, averaged over the functions.
    - sigma: heavy tail across functions. Each function's mean rate is log-normal with
      this sigma, rescaled so the mean over functions is `mean_rate`; sigma=1 gives a
      ~13x spread between the 10th and 90th percentile function, sigma=2 a ~170x spread
      (the top 10% of functions then get most of the requests), sigma=0 equal rates.
    - burstiness in [0, 1]: each minute's rate is the function's mean times a gamma
      variate of mean 1 and coefficient of variation 2·burstiness (a gamma-modulated
      Poisson process); 0 gives a steady Poisson process, 1 minutes that swing from
      near silence to several times the mean.
    - seed: the same arguments give the same trace.
    """
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


def generate_uniform(functions: int, minutes: int, low: int = 5, high: int = 30, seed: int = 0) -> Trace:
    """Torpor's evaluation workload (§7.3): each function's count in each minute drawn
    uniformly from low..high requests (the paper: 5-30 per minute), minute by minute.
    Replay it with arrivals(even=True) to spread each minute's requests evenly."""
    if functions < 1 or minutes < 1:
        raise ValueError("traces: functions and minutes must be >= 1")
    if not 0 <= low <= high:
        raise ValueError(f"traces: requests per minute must satisfy 0 <= low <= high, got {low}..{high}")
    rng = np.random.default_rng(seed)
    counts = rng.integers(low, high + 1, size=(functions, minutes), dtype=np.int64)
    return Trace([f"f{i:04d}" for i in range(functions)], counts)


def parse_rpm(text: str) -> tuple[int, int]:
    """`LOW:HIGH` requests per minute (generate_uniform's range), e.g. "5:30"."""
    try:
        low, high = (int(x) for x in text.split(":"))
    except ValueError:
        raise ValueError(f"expected LOW:HIGH requests per minute, e.g. 5:30, got {text!r}") from None
    if not 0 <= low <= high:
        raise ValueError(f"expected 0 <= LOW <= HIGH requests per minute, got {text!r}")
    return low, high


def read_azure_csv(
    path: str | Path, functions: int | None = None, start_minute: int = 1, minutes: int | None = None
) -> Trace:
    """Per-minute counts of the first `functions` rows, minutes start_minute .. start_minute+minutes-1.

    The file has the Azure Functions 2019 layout: a header HashOwner,HashApp,HashFunction,
    Trigger,1,2,...,N and one row per function; functions are named by HashFunction.
    A malformed file raises ValueError naming the file, the line and the column.
    """
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            return _read_azure_rows(csv.reader(f), path, functions, start_minute, minutes)
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not a text CSV file ({exc.reason} at byte {exc.start})") from None
    except csv.Error as exc:
        raise ValueError(f"{path}: malformed CSV: {exc}") from None


def _read_azure_rows(
    reader: Iterator[list[str]], path: Path, functions: int | None, start_minute: int, minutes: int | None
) -> Trace:
    header = next(reader, None)
    if header is None or tuple(c.strip() for c in header[:4]) != AZURE_COLUMNS:
        raise ValueError(f"{path}: line 1: expected the columns {','.join(AZURE_COLUMNS)},1,2,...")
    for j, col in enumerate(header[4:], 1):
        if col.strip() != str(j):
            raise ValueError(f"{path}: line 1, column {j + 4}: expected minute {j}, found {col!r}")
    available = len(header) - 4
    first = start_minute - 1
    last = available if minutes is None else first + minutes
    if first < 0 or last > available or first >= last:
        raise ValueError(f"{path}: minutes {start_minute}..{last} asked for, the file has 1..{available}")
    names: list[str] = []
    rows: list[list[int]] = []
    for line, row in enumerate(reader, 2):
        if functions is not None and len(rows) >= functions:
            break
        if not row:
            continue
        if len(row) != len(header):
            raise ValueError(f"{path}: line {line}: {len(row)} columns, the header has {len(header)}")
        rows.append([_count(row[col], path, line, col) for col in range(4 + first, 4 + last)])
        names.append(row[2])
    if not rows:
        raise ValueError(f"{path}: no function rows")
    return Trace(names, np.asarray(rows, dtype=np.int64))


def _count(cell: str, path: Path, line: int, col: int) -> int:
    try:
        value = int(cell)
    except ValueError:
        value = -1
    if value < 0:
        raise ValueError(f"{path}: line {line}, column {col + 1}: expected a count >= 0, found {cell!r}")
    return value


def write_azure_csv(trace: Trace, path: str | Path) -> None:
    """The same layout, so a generated trace can be saved, inspected and replayed."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([*AZURE_COLUMNS, *range(1, trace.minutes + 1)])
        for name, row in zip(trace.functions, trace.counts, strict=True):
            w.writerow(["owner", "app", name, "http", *(int(c) for c in row)])
