"""What the locustfile replays: its configuration, the trace mapped onto deployed functions, the request log.

Locust-free, so `python -m loadtest.run` can check a configuration before starting
locust, and tests can exercise it without a load generator.
"""

from __future__ import annotations

import csv
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from shared import traces
from shared.specs import ENCODINGS, Body, request_body

REQUEST_LOG_COLUMNS = tuple(
    "start function trace_function ms status cold source late_ms queue_ms swap_ms exec_ms".split()
    + [f"{phase}_ms" for phase in ("read", "parse", "dispatch", "encode", "gateway")]
)
TIMED_PHASES = ("queue", "swap", "exec", "read", "parse", "dispatch", "encode", "gateway")  # the log's order


def server_timing(header: str) -> dict[str, str]:
    """name -> duration (ms, as sent) of a Server-Timing header: `name;dur=1.5, other;dur=2`."""
    phases = {}
    for metric in header.split(","):
        name, _, params = metric.strip().partition(";")
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key == "dur":
                phases[name] = value
    return phases


@dataclass(frozen=True)
class ReplayConfig:
    """The TORPOR_* variables the locustfile reads (documented in its docstring)."""

    trace: str | None = None
    functions: int | None = None  # generated trace: None = one per target
    rate: float = 0.5
    shape: str = "lognormal"  # generated trace: "lognormal" (bursty) or "uniform" (Torpor's §7.3 workload)
    rpm: tuple[int, int] = (5, 30)  # uniform: requests per minute per function, low..high
    sigma: float = 1.0
    burstiness: float = 0.5
    minutes: int = 10
    seed: int = 0
    scale: float = 1.0
    targets: tuple[str, ...] = ()
    prefix: str = ""
    token: str | None = None
    request_log: str | None = None
    drain_s: float = 10.0
    encoding: str = "json"  # the request bodies: JSON tensors or Triton's binary extension

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> ReplayConfig:
        def get(key: str, kind: type, default: Any) -> Any:
            raw = env.get(key, "")
            if raw == "":
                return default
            try:
                return kind(raw)
            except ValueError:
                raise ValueError(f"{key}: expected {kind.__name__}, got {raw!r}") from None

        cfg = cls(
            trace=env.get("TORPOR_TRACE") or None,
            functions=get("TORPOR_FUNCTIONS", int, None),
            rate=get("TORPOR_RATE", float, cls.rate),
            shape=env.get("TORPOR_SHAPE") or cls.shape,
            rpm=_rpm(env.get("TORPOR_RPM") or None, cls.rpm),
            sigma=get("TORPOR_SIGMA", float, cls.sigma),
            burstiness=get("TORPOR_BURSTINESS", float, cls.burstiness),
            minutes=get("TORPOR_MINUTES", int, cls.minutes),
            seed=get("TORPOR_SEED", int, cls.seed),
            scale=get("TORPOR_SCALE", float, cls.scale),
            targets=tuple(t.strip() for t in env.get("TORPOR_TARGETS", "").split(",") if t.strip()),
            prefix=env.get("TORPOR_FUNCTION_PREFIX", ""),
            token=env.get("TORPOR_TOKEN") or None,
            request_log=env.get("TORPOR_REQUEST_LOG") or None,
            drain_s=get("TORPOR_DRAIN", float, cls.drain_s),
            encoding=env.get("TORPOR_ENCODING") or cls.encoding,
        )
        if cfg.shape not in SHAPES:
            raise ValueError(f"TORPOR_SHAPE: expected one of {', '.join(SHAPES)}, got {cfg.shape!r}")
        if cfg.encoding not in ENCODINGS:
            raise ValueError(f"TORPOR_ENCODING: expected one of {', '.join(ENCODINGS)}, got {cfg.encoding!r}")
        for key, value, ok in (
            ("TORPOR_FUNCTIONS", cfg.functions, cfg.functions is None or cfg.functions >= 1),
            ("TORPOR_RATE", cfg.rate, cfg.rate >= 0),
            ("TORPOR_SIGMA", cfg.sigma, cfg.sigma >= 0),
            ("TORPOR_BURSTINESS", cfg.burstiness, 0 <= cfg.burstiness <= 1),
            ("TORPOR_MINUTES", cfg.minutes, cfg.minutes >= 1),
            ("TORPOR_SCALE", cfg.scale, cfg.scale >= 0),
            ("TORPOR_DRAIN", cfg.drain_s, cfg.drain_s >= 0),
        ):
            if not ok:
                raise ValueError(f"{key}: {value} is out of range")
        return cfg

    def to_env(self) -> dict[str, str]:
        """The variables that give back this configuration (for a locust subprocess)."""
        pairs = {
            "TORPOR_TRACE": self.trace,
            "TORPOR_FUNCTIONS": self.functions,
            "TORPOR_RATE": self.rate,
            "TORPOR_SHAPE": self.shape,
            "TORPOR_RPM": "{}:{}".format(*self.rpm),
            "TORPOR_SIGMA": self.sigma,
            "TORPOR_BURSTINESS": self.burstiness,
            "TORPOR_MINUTES": self.minutes,
            "TORPOR_SEED": self.seed,
            "TORPOR_SCALE": self.scale,
            "TORPOR_TARGETS": ",".join(self.targets),
            "TORPOR_FUNCTION_PREFIX": self.prefix,
            "TORPOR_TOKEN": self.token,
            "TORPOR_REQUEST_LOG": self.request_log,
            "TORPOR_DRAIN": self.drain_s,
            "TORPOR_ENCODING": self.encoding,
        }
        return {k: "" if v is None else str(v) for k, v in pairs.items()}

    @property
    def even(self) -> bool:
        """Requests spread evenly within each minute (the uniform shape), not in bursts."""
        return self.shape == "uniform" and not self.trace


SHAPES = ("lognormal", "uniform")


def _rpm(raw: str | None, default: tuple[int, int]) -> tuple[int, int]:
    if raw is None:
        return default
    try:
        return traces.parse_rpm(raw)
    except ValueError as exc:
        raise ValueError(f"TORPOR_RPM: {exc}") from None


def choose_targets(listing: list[dict[str, Any]], cfg: ReplayConfig) -> list[dict[str, Any]]:
    """The deployed functions (as GET /v1/functions lists them) that receive the trace's requests."""
    by_name = {f["name"]: f for f in listing}
    missing = [t for t in cfg.targets if t not in by_name]
    if missing:
        raise ValueError(f"TORPOR_TARGETS: {', '.join(missing)} not deployed (deployed: {', '.join(by_name) or '-'})")
    chosen = [by_name[t] for t in cfg.targets] if cfg.targets else list(listing)
    chosen = [f for f in chosen if f["name"].startswith(cfg.prefix)]
    if not chosen:
        raise ValueError(
            f"no deployed function to invoke (TORPOR_TARGETS={','.join(cfg.targets) or 'all'}, "
            f"TORPOR_FUNCTION_PREFIX={cfg.prefix!r}; deployed: {', '.join(by_name) or '-'})"
        )
    return chosen


def load_trace(cfg: ReplayConfig, targets: int) -> traces.Trace:
    """The configured trace: an Azure-layout CSV (its first `minutes`) or a generated one."""
    if cfg.trace:
        whole = traces.read_azure_csv(cfg.trace, functions=cfg.functions)
        # A run longer than the file simply ends its trace early, rather than failing.
        trace = traces.Trace(whole.functions, whole.counts[:, : cfg.minutes])
    elif cfg.shape == "uniform":
        trace = traces.generate_uniform(cfg.functions or targets, cfg.minutes, *cfg.rpm, seed=cfg.seed)
    else:
        trace = traces.generate(cfg.functions or targets, cfg.minutes, cfg.rate, cfg.sigma, cfg.burstiness, cfg.seed)
    return trace.scaled(cfg.scale, seed=cfg.seed) if cfg.scale != 1.0 else trace


@dataclass(frozen=True)
class Arrival:
    at: float  # seconds after the replay's start
    function: str  # the deployed function invoked
    trace_function: str  # the trace's row it comes from


class Replay:
    """The trace's arrivals, trace functions mapped round-robin onto the target functions.

    Users claim arrivals one at a time from one shared iterator (gevent switches only at
    I/O, so no lock is needed), so any number of users, even a changing one, fires each
    arrival exactly once.
    """

    def __init__(
        self,
        trace: traces.Trace,
        targets: list[dict[str, Any]],
        seed: int,
        lead_s: float = 1.0,
        encoding: str = "json",
        even: bool = False,
    ) -> None:
        self.trace = trace
        self.mapping = {name: targets[i % len(targets)]["name"] for i, name in enumerate(trace.functions)}
        rng = np.random.default_rng(seed)
        # One body per function, encoded once: a fresh JSON encoding per request would cost
        # the load generator more CPU than mlp costs the server.
        self.bodies: dict[str, Body] = {f["name"]: request_body(f["inputs"], rng, encoding) for f in targets}
        self.start = time.time() + lead_s  # every user's clock starts together, after the plan is built
        self._arrivals = self._map(trace.arrivals(seed=seed, even=even))

    def _map(self, arrivals: Iterator[tuple[float, int]]) -> Iterator[Arrival]:
        names = self.trace.functions
        for at, fi in arrivals:
            yield Arrival(at, self.mapping[names[fi]], names[fi])

    def claim(self) -> Arrival | None:
        return next(self._arrivals, None)

    def __repr__(self) -> str:
        return f"Replay({self.trace!r} onto {len(self.bodies)} functions)"


class RequestLog:
    """One CSV line per finished request: what locust's stats lack (cold start, SLO inputs, lateness)."""

    def __init__(self, path: str | Path) -> None:
        self._file: TextIO = open(path, "w", newline="")  # noqa: SIM115 - closed in close()
        self._writer = csv.writer(self._file)
        self._writer.writerow(REQUEST_LOG_COLUMNS)

    def write(self, row: tuple[Any, ...]) -> None:
        self._writer.writerow(row)

    def close(self) -> None:
        self._file.close()
