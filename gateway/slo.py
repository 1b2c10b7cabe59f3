"""SLO bookkeeping for the scheduler: per-function sliding windows, RRC, and the priority split.

A function's SLO is a latency at a percentile p (default p98). Over the recent
window it has served n requests, m of them on time. Torpor's required request
count

    RRC = (p·n − m) / (1 − p)

is how many on-time requests in a row it needs to be back within its SLO:
positive means it is failing now, negative means it has slack to spend. The
scheduler serves functions whose RRC is above a threshold first (the
high-priority class) and everyone else by deadline. The threshold is tuned
online: at the end of each tuning window it moves one step, and keeps moving the
same way while the number of functions meeting their SLO improves, else turns.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass
class SloWindow:
    slo_ms: float
    percentile: float = 0.98  # 0 < p < 1
    window_s: float = 60.0
    outcomes: deque[tuple[float, bool]] = field(default_factory=deque)
    on_time: int = 0  # within the window
    total_on_time: int = 0  # since deploy
    total: int = 0

    def record(self, now: float, latency_ms: float | None) -> None:
        """One request finished after `latency_ms`; None = it was dropped or failed (a miss)."""
        ok = latency_ms is not None and latency_ms <= self.slo_ms
        self.outcomes.append((now, ok))
        self.on_time += ok
        self.total += 1
        self.total_on_time += ok
        self._expire(now)

    def _expire(self, now: float) -> None:
        while self.outcomes and self.outcomes[0][0] < now - self.window_s:
            _, ok = self.outcomes.popleft()
            self.on_time -= ok

    def rrc(self, now: float) -> float:
        self._expire(now)
        p = self.percentile
        return (p * len(self.outcomes) - self.on_time) / (1 - p)

    def meeting(self, now: float) -> bool:
        """Within its SLO over the window (a function with no traffic is)."""
        return self.rrc(now) <= 0

    @property
    def attainment(self) -> float | None:
        return self.total_on_time / self.total if self.total else None


@dataclass
class PriorityTuner:
    """Hill-climbs the RRC threshold of the high-priority class over tuning windows."""

    threshold: float = 0.0
    step: float = 2.0
    period_s: float = 10.0
    lowest: float = -50.0
    highest: float = 50.0
    _direction: float = 1.0
    _last_score: int | None = None
    _next: float | None = None

    def due(self, now: float) -> bool:
        """Whether tune() would act now (so callers count functions only then)."""
        return self._next is None or now >= self._next

    def tune(self, now: float, meeting: int) -> None:
        """Called with the number of functions meeting their SLO now; adjusts once per period."""
        if self._next is None:
            self._next = now + self.period_s
            return
        if now < self._next:
            return
        self._next = now + self.period_s
        if self._last_score is not None and meeting < self._last_score:
            self._direction = -self._direction
        self._last_score = meeting
        self.threshold = min(self.highest, max(self.lowest, self.threshold + self._direction * self.step))
