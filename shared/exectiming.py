"""A model's measured execution profile as the gateway keeps it (torch-free; measured by shared.profiling)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from shared.errors import ProtocolError

HEAVY_SLOWDOWN = 1.15  # a model whose execution slows by this much under a concurrent copy is heavy


@dataclass(frozen=True)
class ExecTiming:
    exec_ms: float  # batch 1, warm
    batch_exec_ms: float | None  # at max_batch, warm (None when max_batch is 1)
    max_batch: int
    slowdown: float  # exec time under a concurrent copy ÷ alone

    @property
    def heavy(self) -> bool:
        return self.slowdown >= HEAVY_SLOWDOWN

    def to_wire(self) -> list[Any]:
        return [self.exec_ms, self.batch_exec_ms, self.max_batch, self.slowdown]

    @classmethod
    def from_wire(cls, obj: object) -> ExecTiming:
        if not (
            isinstance(obj, list)
            and len(obj) == 4
            and isinstance(obj[0], int | float)
            and (obj[1] is None or isinstance(obj[1], int | float))
            and isinstance(obj[2], int)
            and isinstance(obj[3], int | float)
        ):
            raise ProtocolError(f"timing: expected [exec_ms, batch_exec_ms|null, max_batch, slowdown], got {obj!r}")
        return cls(float(obj[0]), None if obj[1] is None else float(obj[1]), int(obj[2]), float(obj[3]))
