"""Admission under overload: which functions the node sheds when their demand exceeds its devices.

A pure part of the scheduler (events in, a verdict out), driven by its clock.

Past the knee, a node that tries to serve everyone serves no one well: every device is
busy all the time, the queues grow, models are evicted while their functions are hot, and
the count of functions within SLO collapses (on the Torpor paper's node, 276 of 600 where
400 of 400 made it). Ordering and dropping late requests cannot help once the work asked
for exceeds the work the devices can do. Admission keeps the asked-for work below a bound:
every `period_s` it estimates each function's demand — its arrivals over the last
`window_s` times the device time its requests take (a running mean over its runs, the
swap-ins they needed included: a node that thrashes spends more than execution; the
profiled execution time until it has run). While the admitted functions' demand is above
`utilization` × the online devices' time and some of them miss their SLO, it sheds
admitted functions: first those already missing their SLO (shedding one loses no function
that was within it), and among equals the costliest (the highest long-run demand, so the
most functions stay within SLO for the device time given up). While demand is below
(1 - `margin`) × the bound, it admits shed functions back, cheapest first, as long as they
fit. A shed function's requests are rejected at once (HTTP 503 with Retry-After), which
its SLO window counts as misses.

The set changes slowly on purpose: a function shed for one minute has already missed its
p98 over half an hour, so churn costs more than a stable choice. A busy node whose
functions all meet their SLOs (a closed loop of clients keeps devices busy without queues)
sheds nothing, and the last admitted function with traffic is never shed (one function
overloading the node is served as well as it can be).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from collections.abc import Set as AbstractSet

SMOOTHING = 0.05  # weight of a run's device time in a function's running mean


class Admission:
    def __init__(self, utilization: float, period_s: float = 10.0, window_s: float = 60.0, margin: float = 0.1) -> None:
        if not 0 < utilization:
            raise ValueError(f"admission utilization: expected a number > 0, got {utilization!r}")
        self.utilization = utilization
        self.period_s = period_s
        self.margin = margin
        self._buckets: deque[dict[str, int]] = deque(maxlen=max(1, round(window_s / period_s)))
        self._current: dict[str, int] = {}
        self._total: dict[str, int] = {}  # arrivals since added
        self._service: dict[str, float] = {}  # device-ms per request: execution and its share of swaps
        self._added: dict[str, float] = {}
        self._shed: set[str] = set()
        self._start: float | None = None  # first arrival
        self._next: float | None = None
        self.demand = 0.0  # admitted demand at the last review, in device-ms per second
        self.capacity = 0.0

    @property
    def shed(self) -> AbstractSet[str]:
        """The functions shed now (a live view: not to be changed by the caller)."""
        return self._shed

    def added(self, name: str, now: float) -> None:
        self._added[name] = now

    def removed(self, name: str) -> None:
        self._added.pop(name, None)
        self._total.pop(name, None)
        self._service.pop(name, None)
        self._current.pop(name, None)
        self._shed.discard(name)

    def served(self, name: str, device_ms: float, requests: int) -> None:
        """A run of `requests` of the function held a device for `device_ms` (swap-in included)."""
        if requests and name in self._added:
            per = device_ms / requests
            last = self._service.get(name)
            self._service[name] = per if last is None else last + SMOOTHING * (per - last)

    def admits(self, name: str) -> bool:
        return name not in self._shed

    def arrived(self, name: str, now: float) -> None:
        self._current[name] = self._current.get(name, 0) + 1
        self._total[name] = self._total.get(name, 0) + 1
        if self._start is None:
            self._start, self._next = now, now + self.period_s

    def due(self, now: float) -> bool:
        return self._next is not None and now >= self._next

    def review(self, now: float, devices: int, exec_ms: Callable[[str], float], behind: Callable[[str], bool]) -> None:
        """Close the period's bucket and re-decide the shed set (call when `due`).

        `exec_ms(name)`: a function's execution time; `behind(name)`: whether it misses its SLO now."""
        assert self._next is not None and self._start is not None
        quiet = min(int((now - self._next) // self.period_s), self._buckets.maxlen or 0)  # periods without a review
        self._next = now + self.period_s
        self._buckets.append(self._current)
        self._buckets.extend({} for _ in range(quiet))
        self._current = {}
        window = len(self._buckets) * self.period_s
        rate: dict[str, float] = {}
        for bucket in self._buckets:
            for name, n in bucket.items():
                if name in self._added:
                    rate[name] = rate.get(name, 0.0) + n / window
        service = self._service
        cost = {name: r * (service.get(name) or exec_ms(name)) for name, r in rate.items()}
        self.capacity = self.utilization * devices * 1000.0
        admitted = [n for n in cost if n not in self._shed]
        self.demand = sum(cost[n] for n in admitted)

        def longrun(name: str) -> float:
            age = max(window, now - self._added.get(name, now))
            return self._total.get(name, 0) / age * (service.get(name) or exec_ms(name))

        if self.demand > self.capacity and any(behind(n) for n in admitted):
            # Functions already missing their SLO first (shedding them loses no function that
            # was within it), the costliest first among equals.
            for name in sorted(admitted, key=lambda n: (not behind(n), -longrun(n), n)):
                if self.demand <= self.capacity or len(admitted) - 1 < 1:
                    break
                self._shed.add(name)
                admitted.remove(name)
                self.demand -= cost[name]
        elif self.demand < self.capacity * (1 - self.margin):
            room = self.capacity * (1 - self.margin)
            for name in sorted(self._shed, key=lambda n: (longrun(n), n)):
                if self.demand + cost.get(name, 0.0) > room:
                    break
                self._shed.discard(name)
                self.demand += cost.get(name, 0.0)
