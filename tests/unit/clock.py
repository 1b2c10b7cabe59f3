"""A clock the test sets by hand, for the pure policy objects (scheduler, cluster policy)."""

from __future__ import annotations


class Clock:
    def __init__(self, t: float = 100.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t
