"""How many idle devices a cold start is split across (ParaServe's parallel degree), from the SLO and cost model.

Pure: no I/O, no clock.

With k stages each device copies about 1/k of the image over its own link at once, so the
transfer part of a cold start shrinks to the largest share's, while execution stays what it is
(the stages run one after another for one request) plus a hand-over per cut:

    predicted(k) = wait + service(max share transfer, exec) + (k - 1) * handoff

Devices behind one PCIe switch share its uplink (cost model), so the stages go to devices on
different switches first. As ParaServe chooses its degree, the smallest k whose prediction
meets the SLO wins -- a split ties up k devices and must be consolidated afterwards -- and when
none meets it, the fastest, if it beats the next smaller k by a margin worth the devices.

The scheduler asks only when one device would miss the SLO (Policy.split: `torpor serve
--split on`, `torpor simulate --policy torpor+split`), and only for a k the model has a cut for
(the workers cut it at PREPARE, gpuworker/stages.py; shares differ in size, so the largest sets
the pace). CPU devices copy through one memory bus -- gpuworker/bench_pipeline.py measures two
copy threads at about 1.4x one thread's rate, not 2x, and the execution reads the weights over
the same bus -- yet a server describes them as sharing no switch, so with --split on it splits
them where this model predicts a gain that bench measured not to be there: the option is for
GPUs on separate PCIe switches, and off by default.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.costmodel import CostModel
from gateway.decisions import Stages

MAX_K = 4  # the most devices a cold start is split over (as gpuworker/stages.py cuts at most)
HANDOFF_MS = 0.5  # one stage's values to the next (a hidden state of a few hundred KB)
MARGIN = 0.05  # a larger split must be this much faster than the next smaller one


@dataclass(frozen=True)
class Degree:
    devices: tuple[int, ...]  # stage i runs on devices[i]; the model is consolidated onto devices[0]
    predicted_ms: float
    one_device_ms: float  # the same request as a one-device swap-in, for comparison

    @property
    def k(self) -> int:
        return len(self.devices)

    def __repr__(self) -> str:
        one = f"{self.one_device_ms:.1f}"
        return f"<Degree k={self.k} on {list(self.devices)} {self.predicted_ms:.1f} ms (1 device {one})>"


def spread(cost: CostModel, idle: list[int], first: int | None = None) -> list[int]:
    """Idle devices ordered so that the first k sit behind as many different switches as possible
    (`first`, if given, leads: the device the model is consolidated onto)."""
    switches = cost.topology.switches
    order: list[int] = []
    seen: set[int] = set()
    for d in ([first] if first is not None else []) + sorted(idle):  # one per switch first, then the rest
        if d not in order and switches[d] not in seen:
            order.append(d)
            seen.add(switches[d])
    return order + [d for d in sorted(idle) if d not in order]


def share_sizes(nbytes: int, k: int, cut: Stages | None = None) -> list[int]:
    """The bytes of each of k stages' shares: as the model's cut says (a cut falls at a swap-group
    boundary, so shares differ), or k equal shares where its cut is unknown."""
    if cut is not None and cut.k == k:
        return list(cut.sizes)
    share = -(-nbytes // k)
    return [share] * (k - 1) + [nbytes - share * (k - 1)]


def equal_cuts(nbytes: int, max_k: int = MAX_K) -> tuple[Stages, ...]:
    """Cuts into 2..max_k equal shares: a simulated model's, which has no swap groups to cut at."""
    return tuple(Stages((), tuple(share_sizes(nbytes, k))) for k in range(2, max_k + 1))


def rest_bytes(nbytes: int, k: int, cut: Stages | None = None) -> int:
    """What a consolidation copies after a k-way split: the image beyond the first share (which
    starts the image: its groups are in first-use order)."""
    return nbytes - share_sizes(nbytes, k, cut)[0]


def share_transfer_ms(
    cost: CostModel,
    nbytes: int,
    devices: list[int],
    active: dict[int, int] | None = None,
    cut: Stages | None = None,
) -> float:
    """The longest of the shares' copies when `devices` each copy their stage's share at once.

    `active`: transfers already running per PCIe switch, which each share's copy shares too."""
    switches = cost.topology.switches
    sizes = share_sizes(nbytes, len(devices), cut)
    transfers = []
    for d, share in zip(devices, sizes, strict=True):
        # The other stages behind this device's switch share its uplink with this one's copy.
        counts = dict(active or {})
        counts[switches[d]] = counts.get(switches[d], 0) + sum(
            1 for o in devices if o != d and switches[o] == switches[d]
        )
        transfers.append(cost.transfer_ms(share, d, None, counts))
    return max(transfers)


def predicted_ms(
    cost: CostModel,
    nbytes: int,
    exec_ms: float,
    devices: list[int],
    wait_ms: float = 0.0,
    active: dict[int, int] | None = None,
    cuts: tuple[Stages, ...] = (),
) -> float:
    """A cold request split over `devices` (one stage each): its predicted completion
    (`cuts`: the model's, for its shares' true sizes)."""
    cut = next((c for c in cuts if c.k == len(devices)), None)
    transfer = share_transfer_ms(cost, nbytes, devices, active, cut)
    return wait_ms + cost.service_ms(transfer, exec_ms) + (len(devices) - 1) * HANDOFF_MS


def choose(
    cost: CostModel,
    nbytes: int,
    exec_ms: float,
    idle: list[int],
    slo_ms: float,
    wait_ms: float = 0.0,
    max_k: int = MAX_K,
    active: dict[int, int] | None = None,
    first: int | None = None,
    cuts: tuple[Stages, ...] = (),
) -> Degree:
    """The split of a cold start of `nbytes` (executing in `exec_ms`) over the `idle` devices
    (`first` takes stage 0, when given; `active`: transfers already under way per switch;
    `cuts`: the model's stage cuts -- only a k it has a cut for is a split it can run)."""
    if not idle:
        raise ValueError("a cold start needs an idle device")
    order = spread(cost, idle, first)
    options = [
        (k, predicted_ms(cost, nbytes, exec_ms, order[:k], wait_ms, active, cuts))
        for k in range(1, min(max_k, len(order)) + 1)
        if k == 1 or any(c.k == k for c in cuts)
    ]
    one = options[0][1]
    meets = [(k, p) for k, p in options if p <= slo_ms]
    if meets:
        k, p = meets[0]
    else:
        k, p = options[0]
        for k2, p2 in options[1:]:
            if p2 < p * (1 - MARGIN):
                k, p = k2, p2
    return Degree(tuple(order[:k]), p, one)
