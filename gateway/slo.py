"""SLO bookkeeping for the scheduler: per-function sliding windows, RRC, and the priority split.

A function's SLO is a latency at a percentile p (default p98). Over the recent
window it has served n requests, m of them on time. Torpor's required request
count

    RRC = (p·n − m) / (1 − p)

is how many on-time requests in a row it needs to be back within its SLO:
positive means it is failing now, negative means it has slack to spend. The
scheduler serves functions whose RRC is above a threshold first (the
high-priority class) and everyone else by deadline. The threshold is tuned
online every 2 s (Torpor's re-split period): it moves one step α, and keeps moving
the same way unless the number of functions meeting their SLO fell by more than 4%;
α doubles after a rise of 4% or more and halves after such a fall.
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

    def spare(self, now: float) -> float:
        """How many more misses the window could take and still meet the percentile (negative: behind)."""
        self._expire(now)
        return self.on_time / self.percentile - len(self.outcomes)

    def meeting(self, now: float) -> bool:
        """Within its SLO over the window (a function with no traffic is)."""
        return self.rrc(now) <= 0

    @property
    def attainment(self) -> float | None:
        return self.total_on_time / self.total if self.total else None


@dataclass
class PriorityTuner:
    """Tunes the RRC threshold of the high-priority class every `period_s` (Torpor re-splits
    the queues every 2 s): the threshold moves by a step α in the current direction; α doubles
    while the number of functions meeting their SLO rose by `gain` (4%) or more, and halves, the
    direction turning, when it fell by more than that."""

    threshold: float = 0.0
    step: float = 2.0  # α
    period_s: float = 2.0
    lowest: float = -50.0
    highest: float = 50.0
    gain: float = 0.04
    min_step: float = 0.5
    max_step: float = 16.0
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
        last = self._last_score
        if last is not None:
            if meeting >= last * (1 + self.gain) and meeting > last:
                self.step = min(self.max_step, self.step * 2)
            elif meeting < last * (1 - self.gain):
                self.step = max(self.min_step, self.step / 2)
                self._direction = -self._direction
        self._last_score = meeting
        self.threshold = min(self.highest, max(self.lowest, self.threshold + self._direction * self.step))
