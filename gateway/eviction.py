"""Which models to evict from a device so another fits: the cheapest window of adjacent slices.

Pure bookkeeping over one device's arena, no policy of its own: the scheduler prices
each resident model (or keeps it), this module finds the run of neighbouring slices,
with the holes between them, that frees room for the new model at the lowest price.
"""

from __future__ import annotations

from collections.abc import Callable

from gateway.devicestate import DeviceState, Resident
from shared.arena import align_up

# A price is (what evicting it costs, when it was last used); None keeps the model.
Price = tuple[float, float] | None


def cheapest_window(
    d: DeviceState, nbytes: int, price: Callable[[Resident], Price], recency_of_all: bool
) -> list[str] | None:
    """Models to evict from `d` so `nbytes` fit in one slice ([] if they fit now), or None.

    Windows are compared by total price, then by the newest last use among the priced
    (non-free) models in them — or among all of them when `recency_of_all` (plain LRU) —
    then by bytes evicted.
    """
    if nbytes > d.layout.capacity:
        return None
    if d.layout.fits(nbytes):
        return []
    protected = d.in_use()
    by_offset = {r.slice.offset: r for r in d.resident.values()}
    taken = d.layout.slices()
    prices: list[Price] = []
    for sl in taken:
        r = by_offset.get(sl.offset)
        prices.append(None if r is None or r.model_id in protected else price(r))
    need = align_up(nbytes)
    best: tuple[tuple[float, ...], int, int] | None = None
    for i in range(len(taken)):
        lo = taken[i - 1].end if i else 0
        total, newest, evicted = 0.0, float("-inf"), 0
        for j in range(i, len(taken)):
            p = prices[j]
            if p is None:
                break
            total += p[0]
            newest = max(newest, p[1]) if (p[0] or recency_of_all) else newest
            evicted += taken[j].size
            hi = taken[j + 1].offset if j + 1 < len(taken) else d.layout.capacity
            if hi - lo >= need:
                key = (total, newest, float(evicted))
                if best is None or key < best[0]:
                    best = (key, i, j)
                break
    if best is None:
        return None
    _, i, j = best
    return [by_offset[taken[k].offset].model_id for k in range(i, j + 1)]
