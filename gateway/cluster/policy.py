"""Routing and placement across nodes as one pure policy: events in, decisions out.

No I/O and an injected clock, like gateway/scheduler.py: the live node (gateway/cluster/node.py)
feeds it from Redis and from its own requests, and `torpor simulate --nodes` drives the very
same object on a virtual clock.

Routing: a request runs where it arrived when this node holds the function and its predicted
completion meets the SLO (or nobody else holds it); otherwise it goes once to the holder with
the best predicted completion (wait + hop + swap-in + exec). A forwarded request is never
forwarded again. Placement: every function keeps at least one holder that is up; a function
whose holders are all down or draining is claimed by the up node with the most free host
memory; a function this node keeps forwarding at a high rate, or whose holders cannot meet its
SLO, gets a replica here; an idle replica leaves when host memory is needed, never the last copy.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.cluster.records import FunctionDef, Hold, HoldState, NodeRecord, NodeState

UNPROFILED_EXEC_MS = 10.0  # until a holder reports its scheduler's estimate


@dataclass(frozen=True)
class Local:
    predicted_ms: float


@dataclass(frozen=True)
class Forward:
    node: str
    url: str
    predicted_ms: float


@dataclass(frozen=True)
class NoHolder:
    reason: str


Route = Local | Forward | NoHolder


@dataclass(frozen=True)
class Claim:
    function: str
    mode: str  # "rehome": it has no live holder; "replica": one more copy here


@dataclass(frozen=True)
class Release:
    function: str


@dataclass(frozen=True)
class Knobs:
    hop_ms: float = 1.0  # one node-to-node HTTP hop
    host_to_device_bytes_per_s: float = 10e9  # swap-in from host memory on a remote node
    down_after_s: float = 3.0  # a node silent this long is down
    max_replicas: int = 3
    replica_rate: float = 20.0  # forwarded requests per second of one function that earn a local replica
    window_s: float = 10.0  # rates are counted over this window
    idle_s: float = 30.0  # a replica unused this long may leave when memory is needed


@dataclass
class NodeView:
    record: NodeRecord
    seen_at: float  # policy clock when its last heartbeat was read
    missing: bool = False  # its record expired in Redis
    sent: int = 0  # requests forwarded to it since its last heartbeat
    unreachable_until: float = 0.0  # a forward to it failed: skip it until then


@dataclass
class _Demand:
    forwarded: deque[float] = field(default_factory=deque)  # when requests of it were forwarded from here
    last_local: float = float("-inf")  # when it last ran here


def _until(view: NodeView | None, record: NodeRecord) -> float:
    """A failed forward keeps a node skipped until a heartbeat newer than the failure."""
    return view.unreachable_until if view is not None and not view.missing and record.ts == view.record.ts else 0.0


class ClusterPolicy:
    def __init__(self, me: str, clock: Callable[[], float], knobs: Knobs | None = None) -> None:
        self.me = me
        self.clock = clock
        self.knobs = knobs or Knobs()
        self.nodes: dict[str, NodeView] = {}
        self.functions: dict[str, FunctionDef] = {}
        self.holders: dict[str, dict[str, Hold]] = {}
        self.registry_reachable = True
        self._demand: dict[str, _Demand] = {}

    def __repr__(self) -> str:
        up = sorted(n for n in self.nodes if self.state_of(n) == NodeState.UP)
        return f"<ClusterPolicy {self.me} nodes={len(self.nodes)} up={up} functions={len(self.functions)}>"

    # -- events ------------------------------------------------------------------
    def node_seen(self, record: NodeRecord) -> None:
        """Its record is in Redis: it is alive (the TTL decides, not this node's own clock)."""
        view = self.nodes.get(record.name)
        if view is None or record.ts != view.record.ts or view.missing:
            self.nodes[record.name] = NodeView(record, self.clock(), unreachable_until=_until(view, record))
        else:
            view.seen_at = self.clock()

    def node_missing(self, name: str) -> None:
        """Its record is gone from Redis: the TTL ran out without a heartbeat."""
        view = self.nodes.get(name)
        if view is not None:
            view.missing = True

    def node_forgotten(self, name: str) -> None:
        self.nodes.pop(name, None)

    def node_unreachable(self, name: str) -> None:
        """A forward to it failed: route around it until a newer heartbeat says otherwise."""
        view = self.nodes.get(name)
        if view is not None:
            view.unreachable_until = self.clock() + self.knobs.down_after_s

    def reachability(self, reachable: bool) -> None:
        """Whether Redis answers. While it does not, nothing is placed, and nobody is declared down."""
        self.registry_reachable = reachable

    def function_defined(self, fn: FunctionDef, holders: dict[str, Hold]) -> None:
        self.functions[fn.name] = fn
        self.holders[fn.name] = dict(holders)

    def function_removed(self, name: str) -> None:
        self.functions.pop(name, None)
        self.holders.pop(name, None)
        self._demand.pop(name, None)

    def ran_here(self, function: str) -> None:
        self._demand.setdefault(function, _Demand()).last_local = self.clock()

    # -- queries -------------------------------------------------------------------
    def state_of(self, name: str) -> NodeState:
        """Down once its record expired in Redis (no heartbeat within the TTL).

        Not from this node's own clock: a node whose event loop was held up must not
        declare the others down for its own delay.
        """
        view = self.nodes.get(name)
        if view is None or view.missing:
            return NodeState.DOWN
        return view.record.state

    def live_holders(self, function: str, states: tuple[NodeState, ...] = (NodeState.UP,)) -> list[str]:
        """Nodes in one of `states` whose host memory holds the function's image."""
        return sorted(
            n
            for n, h in self.holders.get(function, {}).items()
            if h.state == HoldState.HOST and self.state_of(n) in states
        )

    def predicted_ms(self, function: str, node: str) -> float:
        """A request's completion on another node: hop, its queue, swap-in unless resident, exec.

        Unbounded where that node's admission sheds the function: it would refuse the request
        (a holder that does not is preferred; with none, a forward there still gets the 503).
        """
        fn = self.functions[function]
        rec = self.nodes[node].record
        if function in rec.shed:
            return math.inf
        exec_ms = rec.exec_ms.get(function, UNPROFILED_EXEC_MS)
        ahead = rec.queued + self.nodes[node].sent + max(0, rec.running - rec.devices + 1)
        wait = ahead * exec_ms / max(1, rec.devices)
        swap = 0.0 if function in rec.resident else fn.model_bytes / self.knobs.host_to_device_bytes_per_s * 1e3
        return self.knobs.hop_ms + wait + swap + exec_ms

    # -- decisions -----------------------------------------------------------------
    def route(self, function: str, here_ms: float | None, forwarded: bool = False) -> Route:
        """Where a request that arrived here runs. `here_ms`: its predicted completion here, None if not held."""
        if forwarded:  # forwarded once already: never again
            return Local(here_ms) if here_ms is not None else NoHolder(f"node {self.me} does not hold {function!r}")
        return self._choose(function, here_ms, set())

    def failover(self, function: str, here_ms: float | None, tried: set[str]) -> Route:
        """The forward to a node in `tried` failed: once more elsewhere, or here."""
        for name in tried:
            self.node_unreachable(name)
        return self._choose(function, here_ms, tried)

    def _choose(self, function: str, here_ms: float | None, exclude: set[str]) -> Route:
        fn = self.functions.get(function)
        if fn is None:
            return Local(here_ms) if here_ms is not None else NoHolder(f"function {function!r} is not deployed")
        if here_ms is not None and here_ms <= fn.slo_ms:
            return Local(here_ms)
        now = self.clock()
        candidates = [
            n
            for n in self.live_holders(function, (NodeState.UP,))
            if n != self.me and n not in exclude and self.nodes[n].unreachable_until <= now
        ]
        # A draining holder still serves while its image is handed over; a node loading it may
        # have it already (its confirmation is still on the way); a holder whose record just
        # expired may only have missed a heartbeat. A forward to one that cannot serve fails at
        # once and is retried elsewhere.
        for fallback in ((NodeState.DRAINING,), "loading", (NodeState.DOWN,)):
            if candidates:
                break
            if fallback == "loading":
                names = [
                    n
                    for n, h in self.holders.get(function, {}).items()
                    if h.state == HoldState.LOADING and self.state_of(n) == NodeState.UP
                ]
            else:
                names = self.live_holders(function, fallback)  # type: ignore[arg-type]
            candidates = [
                n
                for n in names
                if n != self.me and n in self.nodes and n not in exclude and self.nodes[n].unreachable_until <= now
            ]
        best = min(candidates, key=lambda n: (self.predicted_ms(function, n), n), default=None)
        if best is None:
            if here_ms is not None:
                return Local(here_ms)
            return NoHolder(f"no live node holds {function!r} now; it is being placed again")
        predicted = self.predicted_ms(function, best)
        if here_ms is not None and here_ms <= predicted:
            return Local(here_ms)
        view = self.nodes[best]
        view.sent += 1
        demand = self._demand.setdefault(function, _Demand())
        demand.forwarded.append(now)
        return Forward(best, view.record.url, predicted)

    def plan(self, host_used: int, host_budget: int) -> list[Claim | Release]:
        """What this node should claim or let go now (the node acts; Redis arbitrates races)."""
        if self.state_of(self.me) != NodeState.UP or not self.registry_reachable:
            return []
        now = self.clock()
        out: list[Claim | Release] = []
        free = host_budget - host_used if host_budget else None
        for name, fn in sorted(self.functions.items()):
            holds = self.holders.get(name, {})
            mine = holds.get(self.me)
            live = [
                n
                for n, h in holds.items()
                if self.state_of(n) == NodeState.UP and (h.state == HoldState.HOST or n == self.me)
            ]
            if mine is None and not live:
                if self._rehome_target(fn) == self.me:
                    out.append(Claim(name, "rehome"))
                continue
            if mine is None and len(holds) < self.knobs.max_replicas and self._wants_replica(name, now):
                if free is None or free >= fn.model_bytes:
                    out.append(Claim(name, "replica"))
                    free = None if free is None else free - fn.model_bytes
        if free is not None and free < 0:
            out += self._releasable(now, -free)
        return out

    def _rehome_target(self, fn: FunctionDef) -> str | None:
        """The up node with the most free host memory that fits the image (ties by name)."""
        fits = []
        for name in self.nodes:
            if self.state_of(name) != NodeState.UP:
                continue
            rec = self.nodes[name].record
            free = rec.host_budget - rec.host_used if rec.host_budget else float("inf")
            if free >= fn.model_bytes:
                fits.append((-free, name))
        return min(fits)[1] if fits else None

    def _wants_replica(self, name: str, now: float) -> bool:
        demand = self._demand.get(name)
        if demand is None:
            return False
        while demand.forwarded and demand.forwarded[0] < now - self.knobs.window_s:
            demand.forwarded.popleft()
        rate = len(demand.forwarded) / self.knobs.window_s
        if rate >= self.knobs.replica_rate:
            return True
        # Few but slow: the best holder cannot meet the SLO any more.
        holders = [n for n in self.live_holders(name) if n != self.me]
        if not holders or not demand.forwarded or demand.forwarded[-1] < now - 1.0:
            return False
        return min(self.predicted_ms(name, n) for n in holders) > self.functions[name].slo_ms

    def _releasable(self, now: float, needed: int) -> list[Release]:
        """Idle replicas here, least recently used first, until `needed` bytes are free."""
        idle = []
        for name, holds in self.holders.items():
            if self.me not in holds or name not in self.functions:
                continue
            others = [n for n in self.live_holders(name) if n != self.me]
            last = self._demand.get(name, _Demand()).last_local
            if others and now - last >= self.knobs.idle_s:
                idle.append((last, name))
        out = []
        for _, name in sorted(idle):
            if needed <= 0:
                break
            out.append(Release(name))
            needed -= self.functions[name].model_bytes
        return out
