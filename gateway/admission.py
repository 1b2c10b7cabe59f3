"""Admission under overload: which functions the node sheds when their demand exceeds its devices.

A pure part of the scheduler (events in, a verdict out), driven by its clock.

Past the knee, a node that tries to serve everyone serves no one well: every device is
busy all the time, the queues grow, models are evicted while their functions are hot, and
the count of functions within SLO collapses (on the Torpor paper's node, 276 of 600 where
400 of 400 made it). Ordering and dropping late requests cannot help once the work asked
for exceeds the work the devices can do. Admission keeps the asked-for work below a bound:
every `period_s` it estimates each function's demand — its arrivals over the last
`window_s` times the device time its requests take (a running mean over its runs, the
swap-ins they needed included: a node that thrashes spends more than execution, starting
from the profiled execution time). While the admitted functions' demand is above
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
overloading the node is served as well as it can be); by the same rule, a node whose
admitted functions have no traffic admits its cheapest shed function back, fit or not.

A function's device time starts at its profiled execution time, becomes the mean of its
first runs (what a swap-in costs on this node shows at once) and then a running mean that
forgets. While it is shed it has no runs, so its estimate drifts back towards its execution
time: a cold first run of seconds does not lock it out, and the swaps it paid while the
node thrashed need not recur once it is readmitted.

Within a cluster the shed set is this node's own; its heartbeat carries it, so peers route
a shed function's requests to another holder, and with none a node forwarding them asks
for a replica of its own (gateway/cluster/policy.py).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from collections.abc import Set as AbstractSet

SMOOTHING = 0.05  # weight of a run's device time in a function's running mean
RECOVERY = 0.1  # per review, how far a shed function's estimate moves back to its execution time


class Admission:
    def __init__(self, utilization: float, period_s: float = 10.0, window_s: float = 60.0, margin: float = 0.1) -> None:
        if not 0 < utilization:
            raise ValueError(f"admission utilization: expected a number > 0, got {utilization!r}")
        self.utilization = utilization
        self.period_s = period_s
        self.margin = margin
        self.window_s = window_s
        self._buckets: deque[tuple[float, float, dict[str, int]]] = deque()  # (opened, closed, arrivals)
        self._current: dict[str, int] = {}
        self._opened = 0.0  # when the current bucket opened
        self._total: dict[str, int] = {}  # arrivals since added
        self._service: dict[str, float] = {}  # device-ms per request: execution and its share of swaps
        self._runs: dict[str, int] = {}
        self._added: dict[str, float] = {}
        self._shed: set[str] = set()
        self._next: float | None = None  # the next review: a period after the first arrival
        self.demand = 0.0  # admitted demand at the last review, in device-ms per second
        self.capacity = 0.0

    @property
    def shed(self) -> AbstractSet[str]:
        """The functions shed now (a live view: not to be changed by the caller)."""
        return self._shed

    def added(self, name: str, now: float, exec_ms: float) -> None:
        """A function deployed at `now`, profiled at `exec_ms` per request."""
        self._added[name] = now
        self._service[name] = exec_ms
        self._runs[name] = 0

    def removed(self, name: str) -> None:
        for table in (self._added, self._total, self._service, self._runs, self._current):
            table.pop(name, None)
        for _, _, bucket in self._buckets:
            bucket.pop(name, None)
        self._shed.discard(name)

    def served(self, name: str, device_ms: float, requests: int) -> None:
        """A run of `requests` of the function held a device for `device_ms` (swap-in included)."""
        last = self._service.get(name)
        if requests and last is not None:
            # The mean of its runs so far until there are 1/SMOOTHING of them, then a running
            # mean that forgets: the first runs tell at once what a swap-in costs on this node.
            runs = self._runs[name] = self._runs[name] + 1
            self._service[name] = last + max(SMOOTHING, 1.0 / runs) * (device_ms / requests - last)

    def admits(self, name: str) -> bool:
        return name not in self._shed

    def arrived(self, name: str, now: float) -> None:
        self._current[name] = self._current.get(name, 0) + 1
        self._total[name] = self._total.get(name, 0) + 1
        if self._next is None:
            self._opened, self._next = now, now + self.period_s

    def due(self, now: float) -> bool:
        return self._next is not None and now >= self._next

    def review(self, now: float, devices: int, exec_ms: Callable[[str], float], behind: Callable[[str], bool]) -> None:
        """Close the period's bucket and re-decide the shed set (call when `due`).

        `devices`: how many are online (with none, the set is left as it is: nothing can be
        measured against no capacity); `exec_ms(name)`: a function's execution time now, which
        a shed function's estimate drifts back to; `behind(name)`: whether it misses its SLO now."""
        assert self._next is not None
        self._next = now + self.period_s
        self._buckets.append((self._opened, now, self._current))
        self._current, self._opened = {}, now
        while self._buckets[0][1] <= now - self.window_s:  # closed before the window: forgotten
            self._buckets.popleft()
        # Rates over the time the buckets really span: a review that comes late (no arrival
        # for a while) has a longer bucket, not a busier one.
        window = max(self.period_s, now - self._buckets[0][0])
        rate: dict[str, float] = {}
        for _, _, bucket in self._buckets:
            for name, n in bucket.items():
                rate[name] = rate.get(name, 0.0) + n / window
        service = self._service
        for name in self._shed:
            service[name] += RECOVERY * (exec_ms(name) - service[name])
        if devices <= 0:
            return
        cost = {name: r * service[name] for name, r in rate.items() if name in service}
        self.capacity = self.utilization * devices * 1000.0
        admitted = [n for n in cost if n not in self._shed]
        self.demand = sum(cost[n] for n in admitted)

        def longrun(name: str) -> float:
            age = max(window, now - self._added.get(name, now))
            return self._total.get(name, 0) / age * service[name]

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
                need = cost.get(name, 0.0)
                if self.demand + need > room and self.demand > 0:
                    continue  # does not fit the window's room; one costlier over the long run may
                self._shed.discard(name)
                self.demand += need
