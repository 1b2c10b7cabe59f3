"""How much host memory function images take, within `--host-memory`, and which go to disk first.

Every function's image file is in the state dir; at most `budget` bytes of images are
in host shared memory. Where each image is (its tier) is the scheduler's to know, since
it decides when a request brings an image in; this object only accounts bytes and
recency. When room is needed, the least recently invoked functions go back to disk --
never one whose host image a device is copying from right now (`pinned`), nor the one
being made room for. Pure: the service does the I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


class Tier:
    HOST = "host"  # the image is in host shared memory
    FILLING = "filling"  # a worker's swap-in is reading it from disk into host memory
    DISK = "disk"  # only the image file in the state dir


@dataclass
class HostTier:
    budget: int | None  # None: no bound, every image stays in host memory
    sizes: dict[str, int] = field(default_factory=dict)  # function -> image bytes
    last_used: dict[str, float] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"<HostTier budget={self.budget} functions={len(self.sizes)}>"

    def add(self, function: str, nbytes: int, now: float) -> None:
        self.sizes[function] = nbytes
        self.last_used[function] = now

    def remove(self, function: str) -> None:
        self.sizes.pop(function, None)
        self.last_used.pop(function, None)

    def touch(self, function: str, now: float) -> None:
        if function in self.last_used:
            self.last_used[function] = now

    def used(self, tiers: Mapping[str, str]) -> int:
        """Bytes of host memory held by images (a filling image holds its whole segment)."""
        return sum(n for f, n in self.sizes.items() if tiers.get(f, Tier.HOST) != Tier.DISK)

    def fits(self, nbytes: int, tiers: Mapping[str, str]) -> bool:
        return self.budget is None or self.used(tiers) + nbytes <= self.budget

    def victims(self, nbytes: int, tiers: Mapping[str, str], keep: str, pinned: set[str]) -> list[str] | None:
        """Least recently used host images to push to disk so `nbytes` more fit; None if they cannot."""
        if self.budget is None:
            return []
        over = self.used(tiers) + nbytes - self.budget
        chosen: list[str] = []
        candidates = sorted(
            (f for f in self.sizes if tiers.get(f, Tier.HOST) == Tier.HOST and f != keep and f not in pinned),
            key=lambda f: self.last_used[f],
        )
        for f in candidates:
            if over <= 0:
                break
            chosen.append(f)
            over -= self.sizes[f]
        return chosen if over <= 0 else None
