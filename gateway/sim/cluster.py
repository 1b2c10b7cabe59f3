"""A cluster on the virtual clock: K nodes, each the live scheduler, routed and placed by the live
cluster policy (gateway/cluster/policy.py), one policy object per node as on real nodes.

What is simulated besides each node's devices (gateway/sim/engine.py):
- requests arrive at the nodes round-robin (a load balancer in front of the live nodes); the
  entry node's policy runs them there or forwards them once, which costs `hop_ms`;
- every `heartbeat_s` each live node publishes its record (holds, resident models, queue) and
  every node's policy reads them all; then each node acts on its policy's plan: a claimed
  function's image comes over the network at `link_bytes_per_s` before the node holds it;
  claims follow the Redis scripts' rules (one live holder is enough for a rehome; a cap on
  replicas; never the last copy released);
- a node lost at `kill_at` drops what it had queued or running; the others see it down after
  the heartbeat TTL and rehome its functions.
Functions start on the nodes in a shuffled round-robin (where their deploys landed).
"""

from __future__ import annotations

import heapq
import itertools
import random
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from gateway.cluster.policy import Claim, ClusterPolicy, Forward, Knobs, Local, Release
from gateway.cluster.records import FunctionDef, Hold, HoldState, NodeRecord
from gateway.sim.engine import FunctionTally, SimFunction, Simulation
from gateway.sim.profile import HardwareProfile

DELIVER, LOADED, BEAT = 0, 1, 2


@dataclass(frozen=True)
class ClusterKnobs:
    hop_ms: float = 1.0  # a forward's added latency (measured here: ~0.6 ms, loadtest/bench_cluster.py)
    link_bytes_per_s: float = 1.25e9  # node-to-node network (10 Gbit/s) for image fetches
    heartbeat_s: float = 0.5
    ttl_s: float = 3.0
    max_replicas: int = 3
    kill_node: int | None = None  # a node lost at kill_at seconds
    kill_at: float = 0.0


class NodeSimulation(Simulation):
    """One node's devices and scheduler, fed one request at a time by the cluster."""

    def advance(self, t: float) -> None:
        while self._events and self._events[0][0] <= t:
            self._step()
        self.now = max(self.now, t)

    def lose(self) -> None:
        for fi, _, _ in self._arrival.values():
            self.tallies[fi].dropped += 1
        self._arrival.clear()
        self._events.clear()
        self._running.clear()


class ClusterSimulation:
    def __init__(
        self,
        profile: HardwareProfile,
        policy: str,
        functions: list[SimFunction],
        nodes: int,
        seed: int,
        knobs: ClusterKnobs,
    ) -> None:
        if knobs.kill_node is not None and not 0 <= knobs.kill_node < nodes:
            raise ValueError(f"--kill-node: expected a node from 0 to {nodes - 1}, got {knobs.kill_node}")
        if knobs.hop_ms < 0 or knobs.link_bytes_per_s <= 0:
            raise ValueError("--hop-ms must be >= 0 and --node-link-gbps > 0")
        self.profile, self.policy, self.functions, self.knobs = profile, policy, functions, knobs
        self.now = 0.0
        self.names = [f"n{k}" for k in range(nodes)]
        # Placement across nodes is the cluster policy's: a node does not fill its devices with
        # functions it was not given.
        self.nodes = [NodeSimulation(profile, policy, functions, seed=seed + k, preload=False) for k in range(nodes)]
        pk = Knobs(
            hop_ms=knobs.hop_ms,
            host_to_device_bytes_per_s=profile.topology.host_bandwidth,
            down_after_s=knobs.ttl_s,
            max_replicas=knobs.max_replicas,
        )
        self.policies = [ClusterPolicy(n, lambda: self.now, pk) for n in self.names]
        self.defs = {
            f.name: FunctionDef(f.name, 1, {"model": {}, "slo_ms": f.slo_ms}, [], [], f.model.nbytes) for f in functions
        }
        self.exec_ms = {f.name: f.model.exec_ms for f in functions}
        self.index = {f.name: i for i, f in enumerate(functions)}
        # Each function starts on the node that took its deploy: behind a load balancer, any
        # node, so functions are dealt out in a shuffled order (equal counts, models mixed;
        # dealing in deploy order would give each node one model when K is a multiple of
        # the number of models, as the static split does).
        order = list(range(len(functions)))
        random.Random(seed).shuffle(order)
        self.holders: dict[str, dict[str, Hold]] = {
            functions[i].name: {self.names[j % nodes]: Hold(HoldState.HOST, 1)} for j, i in enumerate(order)
        }
        self.alive = [True] * nodes
        self.died_at: dict[int, float] = {}
        self.lost = FunctionTally()  # requests with nowhere to go, by function below
        self.unrouted = [0] * len(functions)
        self.forwards = self.claims = self.releases = 0
        self._events: list[tuple[float, int, int, Any]] = []
        self._seq = itertools.count()
        for name in self.defs:
            self._publish(name)
        self._beat()

    # -- driving -------------------------------------------------------------------
    def run(self, arrivals: Any, horizon_s: float = 300.0) -> ClusterSimulation:
        rid = itertools.count(1)
        self._push(self.knobs.heartbeat_s, BEAT, None)
        entry = itertools.count()
        last = 0.0
        for t, fi in arrivals:
            last = t
            self._until(t)
            live = [k for k, a in enumerate(self.alive) if a]
            self._route(next(rid), fi, live[next(entry) % len(live)], t)
        for node in self.nodes:
            node.end = last
        self._until(self.now + horizon_s, beats=False)
        for k, node in enumerate(self.nodes):
            node.advance(self.now)
            if self.alive[k]:
                node.lose()  # still waiting at the horizon: a miss
        return self

    def _until(self, t: float, beats: bool = True) -> None:
        while self._events and self._events[0][0] <= t:
            when, _, kind, data = heapq.heappop(self._events)
            self._clock(when)
            if kind == DELIVER:
                self._deliver(*data)
            elif kind == LOADED:
                self._loaded(*data)
            elif beats:
                self._beat()
                self._push(when + self.knobs.heartbeat_s, BEAT, None)
        self._clock(t)

    def _clock(self, t: float) -> None:
        self.now = max(self.now, t)
        k = self.knobs.kill_node
        if k is not None and self.alive[k] and self.now >= self.knobs.kill_at:
            self.nodes[k].advance(self.knobs.kill_at)
            self.nodes[k].lose()
            self.alive[k] = False
            self.died_at[k] = self.knobs.kill_at
        for node, a in zip(self.nodes, self.alive, strict=True):
            if a:
                node.advance(self.now)

    # -- requests ----------------------------------------------------------------------
    def _here_ms(self, k: int, name: str) -> float | None:
        holds = self.holders[name]
        if self.names[k] not in holds or holds[self.names[k]].state != HoldState.HOST:
            return None
        if len(holds) <= 1:
            return 0.0
        return self.nodes[k].scheduler.predict(name)["completion_ms"]

    def _route(self, rid: int, fi: int, k: int, arrived: float, tried: frozenset[int] = frozenset()) -> None:
        name = self.functions[fi].name
        policy = self.policies[k]
        if tried:
            route = policy.failover(name, self._here_ms(k, name), {self.names[j] for j in tried})
        else:
            route = policy.route(name, self._here_ms(k, name))
        if isinstance(route, Local):
            policy.ran_here(name)
            self.nodes[k].arrive(rid, fi, arrived)
        elif isinstance(route, Forward):
            self.forwards += 1
            target = self.names.index(route.node)
            self._push(self.now + self.knobs.hop_ms / 1e3, DELIVER, (rid, fi, target, k, arrived, tried))
        else:
            self.unrouted[fi] += 1

    def _deliver(self, rid: int, fi: int, target: int, sender: int, arrived: float, tried: frozenset[int]) -> None:
        if self.alive[target]:
            self.policies[target].ran_here(self.functions[fi].name)
            self.nodes[target].arrive(rid, fi, arrived)
        elif not tried and self.alive[sender]:  # the target died: once more elsewhere
            self._route(rid, fi, sender, arrived, tried | {target})
        else:
            self.unrouted[fi] += 1

    # -- placement -------------------------------------------------------------------------
    def _beat(self) -> None:
        for k, node in enumerate(self.nodes):
            if not self.alive[k]:
                if not self._record_exists(self.names[k]):
                    for p in self.policies:
                        p.node_missing(self.names[k])
                continue
            sched = node.scheduler
            resident = {m.partition("@")[0] for d in sched.devices for m in d.resident}
            held = tuple(n for n, h in self.holders.items() if self.names[k] in h)
            record = NodeRecord(
                self.names[k],
                self.names[k],
                ts=self.now,
                devices=len(sched.devices),
                held=held,
                resident=tuple(sorted(resident)),
                queued=sched.queued(),
                running=sum(d.running is not None for d in sched.devices),
                exec_ms=self.exec_ms,
                shed=tuple(sorted(sched.admission.shed)) if sched.admission is not None else (),
            )
            for p in self.policies:
                p.node_seen(record)
        for k in range(len(self.nodes)):
            if not self.alive[k]:
                continue
            for decision in self.policies[k].plan(0, 0):
                if isinstance(decision, Claim):
                    self._claim(k, decision)
                elif isinstance(decision, Release):
                    self._release(k, decision.function)

    def _record_exists(self, name: str) -> bool:
        k = self.names.index(name)
        return self.alive[k] or self.now < self.died_at[k] + self.knobs.ttl_s

    def _claim(self, k: int, claim: Claim) -> None:
        holds = self.holders[claim.function]
        me = self.names[k]
        live = [n for n in holds if self._record_exists(n)]
        if me in holds or (claim.mode == "rehome" and live) or len(live) >= self.knobs.max_replicas:
            return
        for n in [n for n in holds if not self._record_exists(n)]:
            del holds[n]
        holds[me] = Hold(HoldState.LOADING, 0)
        self.claims += 1
        fetch_s = self.defs[claim.function].model_bytes / self.knobs.link_bytes_per_s
        self._push(self.now + fetch_s, LOADED, (k, claim.function))
        self._publish(claim.function)

    def _loaded(self, k: int, name: str) -> None:
        holds = self.holders[name]
        if self.alive[k] and self.names[k] in holds:
            holds[self.names[k]] = Hold(HoldState.HOST, 0)
            self._publish(name)

    def _release(self, k: int, name: str) -> None:
        holds = self.holders[name]
        others = [
            n for n, h in holds.items() if n != self.names[k] and h.state == HoldState.HOST and self._record_exists(n)
        ]
        if others and self.names[k] in holds:
            del holds[self.names[k]]
            self.releases += 1
            self._publish(name)

    def _publish(self, name: str) -> None:
        for p in self.policies:
            p.function_defined(self.defs[name], self.holders[name])

    def _push(self, t: float, kind: int, data: Any) -> None:
        heapq.heappush(self._events, (t, next(self._seq), kind, data))

    # -- results ---------------------------------------------------------------------------
    def merged(self) -> Any:
        """The cluster as one simulation for summarize(): each function's requests from every node."""
        tallies = []
        for fi in range(len(self.functions)):
            t = FunctionTally()
            for node in self.nodes:
                t.latencies_ms.extend(node.tallies[fi].latencies_ms)
                t.dropped += node.tallies[fi].dropped
            t.dropped += self.unrouted[fi]
            tallies.append(t)
        first = self.nodes[0]
        return SimpleNamespace(
            policy=first.policy,
            profile=first.profile,
            functions=self.functions,
            tallies=tallies,
            devices=[d for n in self.nodes for d in n.devices],
            end=max(n.end for n in self.nodes),
            cluster={
                "forwards": self.forwards,
                "claims": self.claims,
                "releases": self.releases,
                "replicated": sum(len(h) > 1 for h in self.holders.values()),
                "unrouted": sum(self.unrouted),
            },
        )
