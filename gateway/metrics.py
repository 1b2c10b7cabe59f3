"""Prometheus metrics (base units, `function` and `device` labels) and per-function latency stats.

Counters and histograms are updated where things happen; gauges that describe
state (queue depth, resident bytes, busy ratio) are read from the scheduler at
scrape time by a collector, so they can never drift from the truth.
"""

from __future__ import annotations

import bisect
import math
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

if TYPE_CHECKING:
    from gateway.service import Service

# Latency buckets from 1 ms to 60 s: a warm mlp and a cold BERT on a CPU both fit.
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
RECENT = 2048  # latencies kept per function for percentiles


@dataclass
class FunctionStats:
    """SLO attainment since start and the recent latency distribution of one function."""

    slo_s: float
    total: int = 0
    on_time: int = 0
    recent: deque[float] = field(default_factory=lambda: deque(maxlen=RECENT))

    def record(self, seconds: float | None) -> None:
        """A served request's latency, or None for one the server failed (a miss)."""
        self.total += 1
        if seconds is not None:
            self.on_time += seconds <= self.slo_s
            self.recent.append(seconds)

    def summary(self) -> dict[str, float | int | None]:
        lat = np.asarray(self.recent) * 1e3 if self.recent else None
        pct = (lambda p: round(float(np.percentile(lat, p)), 3)) if lat is not None else (lambda p: None)
        return {
            "requests": self.total,
            "slo_attainment": (self.on_time / self.total) if self.total else None,
            "p50_ms": pct(50),
            "p98_ms": pct(98),
            "p99_ms": pct(99),
        }


SLO_OUTCOMES = frozenset(("ok", "deadline", "worker_lost", "error", "overloaded", "shed"))  # server's doing: may miss


class Buckets:
    """One histogram child kept as plain numbers: an observation is a bisect and two additions.

    prometheus_client's Histogram takes a lock per bucket increment and scans its bounds;
    a request observes four of them. These are written and read on the event loop only.
    """

    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)  # the last: above every bound (+Inf)
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(BUCKETS, seconds)] += 1  # Prometheus buckets are `le`
        self.sum += seconds

    def cumulative(self) -> list[tuple[str, float]]:
        out, total = [], 0
        for bound, n in zip((*BUCKETS, math.inf), self.counts, strict=True):
            total += n
            out.append((floatToGoString(bound), total))
        return out


class FunctionSeries:
    """A function's request counters and histograms, found with one dict lookup per request."""

    __slots__ = ("outcomes", "latency", "queue", "swap", "exec", "stats")

    def __init__(self) -> None:
        self.outcomes: dict[str, int] = {}
        self.latency, self.queue, self.swap, self.exec = Buckets(), Buckets(), Buckets(), Buckets()
        self.stats: FunctionStats | None = None  # None once the function is removed


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.swaps = Counter("torpor_swaps", "Swap-ins by source (host, peer).", ["device", "source"], registry=r)
        self.swap_bytes = Counter("torpor_swap_bytes", "Bytes swapped in by source.", ["device", "source"], registry=r)
        self.evictions = Counter("torpor_evictions", "Models evicted from a device.", ["device"], registry=r)
        self.eviction_age = Histogram(
            "torpor_eviction_age_seconds",
            "How long an evicted model had been resident.",
            ["device"],
            buckets=(1, 5, 15, 60, 300, 900, 3600, 14400),
            registry=r,
        )
        self.deploy = Histogram(
            "torpor_deploy_duration_seconds",
            "Time to build, pack and prepare a deployed model.",
            ["function"],
            buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
            registry=r,
        )
        self.functions: dict[str, FunctionStats] = {}
        # Per-function request series (requests, latency, queue, swap, exec), exported at scrape time;
        # kept after a function is removed, as Prometheus series are.
        self.series: dict[str, FunctionSeries] = {}
        self.busy_s: dict[int, float] = {}
        self.resident_since: dict[tuple[int, str], float] = {}
        self.started = time.monotonic()

    def attach(self, service: Service) -> None:
        self.registry.register(_StateCollector(service, self))

    # -- events ------------------------------------------------------------------
    def function_deployed(self, name: str, slo_ms: float, seconds: float) -> None:
        stats = self.functions[name] = FunctionStats(slo_ms / 1e3)
        self.series.setdefault(name, FunctionSeries()).stats = stats
        self.deploy.labels(name).observe(seconds)

    def function_removed(self, name: str) -> None:
        self.functions.pop(name, None)
        if name in self.series:
            self.series[name].stats = None

    def request_done(
        self, function: str, outcome: str, seconds: float, phases: tuple[float, float, float] | None
    ) -> None:
        series = self.series.get(function)
        if series is None:
            series = self.series[function] = FunctionSeries()
        series.outcomes[outcome] = series.outcomes.get(outcome, 0) + 1
        series.latency.observe(seconds)
        # A request the server failed is an SLO miss; one the client got wrong (4xx) is not counted.
        if series.stats is not None and outcome in SLO_OUTCOMES:
            series.stats.record(seconds if outcome == "ok" else None)
        if phases is not None:
            queue_s, swap_s, exec_s = phases
            series.queue.observe(queue_s)
            if swap_s > 0:
                series.swap.observe(swap_s)
            series.exec.observe(exec_s)

    def swapped_in(self, device: int, model_id: str, source: str, nbytes: int) -> None:
        kind = "host" if source == "host" else "peer"
        self.swaps.labels(str(device), kind).inc()
        self.swap_bytes.labels(str(device), kind).inc(nbytes)
        self.resident_since[(device, model_id)] = time.monotonic()

    def evicted(self, device: int, model_id: str) -> None:
        self.evictions.labels(str(device)).inc()
        since = self.resident_since.pop((device, model_id), None)
        if since is not None:
            self.eviction_age.labels(str(device)).observe(time.monotonic() - since)

    def device_busy(self, device: int, seconds: float) -> None:
        self.busy_s[device] = self.busy_s.get(device, 0.0) + seconds


class _StateCollector(Collector):
    def __init__(self, service: Service, metrics: Metrics) -> None:
        self.service = service
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        sched = self.service.scheduler
        depth = GaugeMetricFamily("torpor_queue_depth", "Requests waiting for a device.", labels=["function"])
        slo = GaugeMetricFamily("torpor_slo_attainment_ratio", "Share of requests within the SLO.", labels=["function"])
        for name in list(self.service.registry.functions):
            depth.add_metric([name], sched.queue_depth(name))
            stats = self.metrics.functions.get(name)
            if stats is not None and stats.total:
                slo.add_metric([name], stats.on_time / stats.total)
        resident = GaugeMetricFamily("torpor_device_resident_bytes", "Bytes of resident models.", labels=["device"])
        budget = GaugeMetricFamily("torpor_device_budget_bytes", "The device arena's size.", labels=["device"])
        busy = GaugeMetricFamily("torpor_device_busy_ratio", "Share of time executing since start.", labels=["device"])
        uptime = max(time.monotonic() - self.metrics.started, 1e-9)
        for d in sched.devices:
            label = [str(d.index)]
            resident.add_metric(label, d.layout.used)
            budget.add_metric(label, d.layout.capacity)
            busy.add_metric(label, min(1.0, self.metrics.busy_s.get(d.index, 0.0) / uptime))
        yield from (depth, slo, resident, budget, busy)
        admission = sched.admission
        if admission is not None:
            yield GaugeMetricFamily(
                "torpor_shed_functions", "Functions shed by admission (the node is overloaded).", len(admission.shed)
            )
            yield GaugeMetricFamily(
                "torpor_admitted_demand_ratio",
                "Device time the admitted functions ask for, over the online devices' time (last review).",
                admission.demand / admission.capacity * admission.utilization if admission.capacity else 0.0,
            )
        yield from self._requests()

    def _requests(self) -> Iterator[Metric]:
        requests = CounterMetricFamily("torpor_requests", "Invocations by outcome.", labels=["function", "outcome"])
        histograms = {
            "latency": HistogramMetricFamily(
                "torpor_request_duration_seconds", "End-to-end invocation latency.", labels=["function"]
            ),
            "queue": HistogramMetricFamily(
                "torpor_queue_duration_seconds", "Time waiting for a device.", labels=["function"]
            ),
            "swap": HistogramMetricFamily(
                "torpor_swap_duration_seconds", "Swap-in copy time of cold requests.", labels=["function"]
            ),
            "exec": HistogramMetricFamily(
                "torpor_exec_duration_seconds", "Execution time on the device.", labels=["function"]
            ),
        }
        for name, series in list(self.metrics.series.items()):
            for outcome, n in series.outcomes.items():
                requests.add_metric([name, outcome], n)
            for attr, family in histograms.items():
                b: Buckets = getattr(series, attr)
                if any(b.counts):  # as with prometheus_client: a series appears once observed
                    family.add_metric([name], b.cumulative(), b.sum)
        yield requests
        yield from histograms.values()
