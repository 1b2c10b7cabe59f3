"""Pipeline stages of a lifted program, cut at swap-group boundaries (ParaServe's pipeline-parallel cold start).

A model whose transfer dominates may be loaded by k devices at once, each copying only its
stage's share of the image over its own link, and its first requests run as a pipeline: stage
i's values handed to stage i+1. The cut is an FX partition of the lifted graph in node order:
stage i starts at the first node that reads a group of its share, so each stage is a run of
consecutive nodes -- the same nodes, in the same order, on the same inputs as the whole graph,
hence bitwise the same outputs. Groups are in first-use order, so each stage's share is one
contiguous byte range of the image; a tensor read again by a later stage (tied weights) widens
that stage's range.

A stage's graph takes the state tensors it reads (placeholders keep the lifted program's
global names, so the swap gate works on it unchanged), then the values crossing into it, and
returns the values crossing out of it (the last stage: the model's output).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.fx

from gpuworker.swap import SwapPlan
from shared.errors import InvalidInput
from shared.program import Lifted, owner
from shared.protocol import StageCuts

MAX_STAGES = 4  # the most devices a cold start is split over (gateway.paradegree.choose's max_k)


@dataclass(frozen=True)
class Stage:
    index: int
    program: Lifted  # gm(*state[i] for i in state_indices, *crossing in); names: the whole program's
    state_indices: tuple[int, ...]  # positions in the whole program's state arguments
    inputs: int  # values crossing in (stage 0: the model's inputs)
    groups: tuple[int, int]  # [lo, hi): the swap groups it reads, the share its device loads
    last: bool

    def byte_range(self, plan: SwapPlan) -> tuple[int, int]:
        return plan.bounds[self.groups[0]], plan.bounds[self.groups[1]]


def _need(lifted: Lifted, group_of: dict[str, int], node: torch.fx.Node) -> int:
    return max((group_of[n] for n in lifted.reads(node)), default=-1)


def cut_points(lifted: Lifted, plan: SwapPlan, k: int, shares: tuple[float, ...] | None = None) -> tuple[int, ...]:
    """Group cuts [0, c1, ..., groups] giving k stages of about equal bytes (or these fractions of them).

    A cut may only fall where a node first reads a new group (a stage then starts with that
    node); among the candidates near each equal share, the one with the fewest values crossing
    it wins, so a transformer is cut between blocks (one hidden-state tensor crosses).
    """
    if not 1 <= k <= plan.groups:
        raise InvalidInput(f"pipeline stages: expected 1 to {plan.groups} for {plan.groups} groups, got {k}")
    nodes = list(lifted.gm.graph.nodes)
    # (group, node position): a node that reads groups no earlier node read, and the first of
    # them -- a stage starting at that node loads from that group on (a node reading a large
    # tensor reads several groups, all of them its stage's).
    firsts: list[tuple[int, int]] = []
    waited = -1
    for i, node in enumerate(nodes):
        need = _need(lifted, plan.group_of, node)
        if need > waited:
            firsts.append((waited + 1, i))
            waited = need
    crossing = _crossing_counts(nodes)
    total = plan.bounds[-1]
    shares = shares or tuple(1 / k for _ in range(k))
    if len(shares) != k or any(f <= 0 for f in shares):
        raise InvalidInput(f"pipeline stages: {len(shares)} shares for {k} stages, each above 0")
    cuts = [0]
    for j in range(1, k):
        target = total * sum(shares[:j]) / sum(shares)
        near = [(g, i) for g, i in firsts if g > cuts[-1] and abs(plan.bounds[g] - target) <= 0.15 * total]
        if not near:
            near = [min(((g, i) for g, i in firsts if g > cuts[-1]), key=lambda c: abs(plan.bounds[c[0]] - target))]
        g, _ = min(near, key=lambda c: (crossing[c[1]], abs(plan.bounds[c[0]] - target)))
        cuts.append(g)
    cuts.append(plan.groups)
    if len(set(cuts)) != len(cuts):
        raise InvalidInput(f"pipeline stages: {k} stages do not fit this model's {plan.groups} groups")
    return tuple(cuts)


def stage_cuts(lifted: Lifted, plan: SwapPlan) -> list[StageCuts]:
    """The cuts for 2..MAX_STAGES stages, as far as the model's groups allow, with the bytes each
    stage's device loads (PREPARE's reply)."""
    out = []
    for k in range(2, min(MAX_STAGES, plan.groups) + 1):
        try:
            cuts = cut_points(lifted, plan, k)
            groups = stage_groups(lifted, plan, cuts)
        except InvalidInput:
            break  # too few places to cut: more stages will not fit either
        out.append(StageCuts(cuts=list(cuts), sizes=[plan.bounds[hi] - plan.bounds[lo] for lo, hi in groups]))
    return out


def _stage_of(lifted: Lifted, plan: SwapPlan, cuts: tuple[int, ...]) -> dict[torch.fx.Node, int]:
    """Each node's stage: the stage of the cut its latest group falls after (the output: the last)."""
    k = len(cuts) - 1
    stage_of: dict[torch.fx.Node, int] = {}
    s = 0
    for node in lifted.gm.graph.nodes:
        if node.op == "placeholder":
            continue
        need = _need(lifted, plan.group_of, node)
        while s + 1 < k and need >= cuts[s + 1]:
            s += 1
        stage_of[node] = k - 1 if node.op == "output" else s
    return stage_of


def stage_groups(lifted: Lifted, plan: SwapPlan, cuts: tuple[int, ...]) -> list[tuple[int, int]]:
    """[lo, hi) of the groups each stage reads: its device's share (tied weights may widen it
    past its cuts). Without building the stages' graphs."""
    stage_of = _stage_of(lifted, plan, cuts)
    k = len(cuts) - 1
    read: list[list[int]] = [[] for _ in range(k)]
    for node, s in stage_of.items():
        read[s].extend(plan.group_of[n] for n in lifted.reads(node))
    if any(not stage for stage in read[1:]):
        raise InvalidInput(f"pipeline stages: cuts {cuts} leave a stage without weights")
    return [(min(g, default=0), max(g, default=0) + 1) for g in read]


def _crossing_counts(nodes: list[torch.fx.Node]) -> list[int]:
    """For each position, how many values defined before it are used at or after it."""
    pos = {n: i for i, n in enumerate(nodes)}
    last_use = {n: max((pos[u] for u in n.users), default=-1) for n in nodes}
    out, live = [], 0
    ends: dict[int, int] = {}
    for i, n in enumerate(nodes):
        live -= ends.pop(i, 0)  # values whose last use was before i are gone ...
        out.append(live)
        if n.op != "placeholder" or not n.target.startswith("torpor_state_"):
            if last_use[n] > i:
                live += 1
                ends[last_use[n] + 1] = ends.get(last_use[n] + 1, 0) + 1  # ... the position after their last use
    return out


def split(lifted: Lifted, plan: SwapPlan, cuts: tuple[int, ...]) -> list[Stage]:
    """The stages of `lifted` for group cuts `cuts` (see cut_points)."""
    k = len(cuts) - 1
    nodes = list(lifted.gm.graph.nodes)
    stage_of = _stage_of(lifted, plan, cuts)
    members = [[n for n in nodes if stage_of.get(n) == i] for i in range(k)]
    if any(not m for m in members):
        raise InvalidInput(f"pipeline stages: cuts {cuts} leave a stage without nodes")
    inputs = [n for n in nodes if n.op == "placeholder" and not str(n.target).startswith("torpor_state_")]
    crossing_in: list[list[torch.fx.Node]] = [inputs]
    for i in range(1, k):
        later = {n for m in members[i:] for n in m}
        crossing_in.append(
            [n for n in nodes if (stage_of.get(n, -1) < i and not _is_state(n)) and any(u in later for u in n.users)]
        )
    return [
        _stage(lifted, plan, i, members[i], crossing_in[i], crossing_in[i + 1] if i + 1 < k else None) for i in range(k)
    ]


def _is_state(node: torch.fx.Node) -> bool:
    return node.op == "placeholder" and str(node.target).startswith("torpor_state_")


def _stage(
    lifted: Lifted,
    plan: SwapPlan,
    index: int,
    members: list[torch.fx.Node],
    crossing_in: list[torch.fx.Node],
    crossing_out: list[torch.fx.Node] | None,
) -> Stage:
    graph = torch.fx.Graph()
    env: dict[torch.fx.Node, torch.fx.Node] = {}
    reads = sorted(
        {a for n in members for a in n.all_input_nodes if _is_state(a)},
        key=lambda a: int(str(a.target).rsplit("_", 1)[1]),
    )
    for a in reads:
        env[a] = graph.placeholder(str(a.target))  # the global name: the gate maps it to its group
    for v in crossing_in:
        env[v] = graph.placeholder(v.name)
    for node in members:
        if node.op == "output":
            env[node] = graph.node_copy(node, lambda n: env[n])
        else:
            env[node] = graph.node_copy(node, lambda n: env[n])
    if crossing_out is not None:
        graph.output(tuple(env[v] for v in crossing_out))
    attrs = {
        n.target: getattr(*owner(lifted.gm, n.target))
        for n in members
        if n.op in ("call_module", "get_attr") and isinstance(n.target, str)
    }
    gm = torch.fx.GraphModule(attrs, graph)
    indices = tuple(int(str(a.target).rsplit("_", 1)[1]) for a in reads)
    groups = [plan.group_of[lifted.names[i]] for i in indices] or [0]
    program = Lifted(gm, lifted.names, f"{lifted.key}/stage{index}")
    return Stage(index, program, indices, len(crossing_in), (min(groups), max(groups) + 1), crossing_out is None)
