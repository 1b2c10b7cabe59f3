"""Bookkeeping of a device arena: which byte ranges of the fixed budget are taken.

Pure and torch-free: the scheduler owns one per device and decides offsets, the
worker only copies into the range it is told. Slices are aligned so every tensor
view inside a model's slice keeps the alignment it had in the packed host image.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

ALIGN = 4096


def align_up(n: int, align: int = ALIGN) -> int:
    return (n + align - 1) // align * align


@dataclass(frozen=True, slots=True)
class Slice:
    offset: int
    size: int

    @property
    def end(self) -> int:
        return self.offset + self.size


class ArenaLayout:
    """First-fit allocator over [0, capacity); keeps taken slices sorted by offset."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._taken: list[Slice] = []

    def __repr__(self) -> str:
        return f"<ArenaLayout used={self.used}/{self.capacity} slices={len(self._taken)}>"

    @property
    def used(self) -> int:
        return sum(s.size for s in self._taken)

    def slices(self) -> list[Slice]:
        """The taken slices, by offset."""
        return list(self._taken)

    def holes(self) -> list[Slice]:
        holes, pos = [], 0
        for s in self._taken:
            if s.offset > pos:
                holes.append(Slice(pos, s.offset - pos))
            pos = s.end
        if pos < self.capacity:
            holes.append(Slice(pos, self.capacity - pos))
        return holes

    def largest_hole(self) -> int:
        return max((h.size for h in self.holes()), default=0)

    def fits(self, nbytes: int) -> bool:
        return self.largest_hole() >= align_up(nbytes)

    def allocate(self, nbytes: int, high: bool = False) -> Slice | None:
        """First fit from the bottom, or with `high` from the top (the end of the highest hole that
        fits): large models kept at one end and small ones at the other do not interleave, so
        making room for a large one rarely means evicting another large one."""
        size = align_up(nbytes)
        holes = self.holes()
        for hole in reversed(holes) if high else holes:
            if hole.size >= size:
                s = Slice(hole.end - size if high else hole.offset, size)
                bisect.insort(self._taken, s, key=lambda x: x.offset)
                return s
        return None

    def release(self, s: Slice) -> None:
        self._taken.remove(s)

    def fits_after_releasing(self, nbytes: int, released: list[Slice]) -> bool:
        """Would `nbytes` fit if `released` were freed? (Used to plan evictions.)"""
        trial = ArenaLayout(self.capacity)
        gone = set(released)
        trial._taken = [s for s in self._taken if s not in gone]
        return trial.fits(nbytes)
