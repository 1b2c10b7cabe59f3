"""A worker's side of a pipeline-parallel cold start: one stage's share loaded, that stage run, then consolidation.

The gateway splits a model at swap-group cuts over k devices (gpuworker/stages.py): each
device's LOAD carries a `Part` and copies only its stage's bytes, over its own link, at once;
an INFER with the part runs only that stage on the values crossing into it and answers the
values crossing out. The device of the first stage holds a slice of the whole model's size
(`Part.whole`): a plain LOAD at the same offset then consolidates it, copying the rest of the
image after its share, and the whole model runs there -- its full graph waits per group, as in
any swap-in -- while the other devices' shares are evicted, leaving one copy.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from gpuworker.gate import SwapGate, gated
from gpuworker.stages import Stage, split
from gpuworker.swap import Swap, SwapPlan
from shared.errors import InvalidInput, RequestFailed
from shared.protocol import Load, Loaded, Part

if TYPE_CHECKING:
    from gpuworker.executor import Executor, Program, Residency


@dataclass
class StageGraphs:
    stage: Stage
    plain: torch.fx.GraphModule
    gated: torch.fx.GraphModule
    gate: SwapGate


def sub_plan(plan: SwapPlan, lo: int, hi: int) -> SwapPlan:
    """Groups [lo, hi) of `plan`, with bounds relative to the first one's start."""
    base = plan.bounds[lo]
    bounds = tuple(b - base for b in plan.bounds[lo : hi + 1])
    return SwapPlan(bounds, {n: g - lo for n, g in plan.group_of.items() if lo <= g < hi})


class Staging:
    def __init__(self, executor: Executor) -> None:
        self.ex = executor
        self._graphs: dict[tuple[str, tuple[int, ...]], list[StageGraphs]] = {}  # (graphs key, cuts)

    def stages(self, prog: Program, cuts: tuple[int, ...]) -> list[StageGraphs]:
        key = (str(prog.key), cuts)
        found = self._graphs.get(key)
        if found is None:
            if cuts[0] != 0 or cuts[-1] != prog.plan.groups or list(cuts) != sorted(set(cuts)):
                raise InvalidInput(f"part: cuts {list(cuts)} must rise from 0 to the model's {prog.plan.groups} groups")
            lifted = self.ex.lifted_of(prog)
            found = []
            for stage in split(lifted, prog.plan, cuts):
                gm, gate = gated(stage.program, prog.plan.group_of, self.ex.backend)
                found.append(StageGraphs(stage, stage.program.gm, gm, gate))
            self._graphs[key] = found
        return found

    def stage(self, prog: Program, part: Part) -> StageGraphs:
        graphs = self.stages(prog, tuple(part.cuts))
        if part.stage >= len(graphs):
            raise InvalidInput(f"part: stage {part.stage} of {len(graphs)}")
        return graphs[part.stage]

    def load(self, rid: int, prog: Program, body: Load) -> None:
        """Copy one stage's share into its slice (the whole model's size, or the share's)."""
        assert body.part is not None
        if body.peer is not None or body.fill_from is not None or body.follow is not None:
            raise InvalidInput("part: a stage's share is loaded from the host image")
        graphs = self.stage(prog, body.part)
        lo, hi = graphs.stage.groups
        start, end = prog.plan.bounds[lo], prog.plan.bounds[hi]
        whole = body.part.whole
        nbytes = prog.image.nbytes if whole else end - start
        base = 0 if whole else start  # image byte at the slice's first byte
        dst = self.ex.reserve(body.model_id, body.offset, nbytes)[start - base : end - base]
        src = self.ex.backend.host_buffer(prog.image.segment_name)[start:end]
        swap = Swap(prog.model_id, sub_plan(prog.plan, lo, hi), dst, src, lambda s: None, first=lo)
        res = self.ex.start(rid, prog, swap, body.offset, nbytes, "host", end - start)
        res.part, res.base = body.part, base
        if whole:
            self.ex.bind(prog, body.offset)
        else:
            views = self.ex.views_at(prog, body.offset - base, graphs.stage.state_indices)
            res.state = views

    def consolidate(self, rid: int, prog: Program, res: Residency) -> None:
        """The rest of the image after the first stage's share, into its whole-size slice."""
        part = res.part
        assert part is not None
        if not part.whole or part.stage != 0:
            raise InvalidInput(f"model {prog.model_id}: only the first stage's whole-size slice is consolidated")
        hi = self.stage(prog, part).stage.groups[1]
        before = res.swap
        if hi == prog.plan.groups:
            res.part = None  # its share was the whole image
            self.ex.reply(rid, Loaded(swap_ms=0.0, bytes=0, source="host"))
            return
        start = prog.plan.bounds[hi]
        dst = self.ex.backend.arena[res.offset + start : res.offset + prog.image.nbytes]
        src = self.ex.backend.host_buffer(prog.image.segment_name)[start : prog.image.nbytes]
        swap = Swap(prog.model_id, sub_plan(prog.plan, hi, prog.plan.groups), dst, src, lambda s: None)
        swap.first, swap.before = hi, before
        del self.ex.resident[prog.model_id]  # replaced by the whole model's residency, same slice
        new = self.ex.start(rid, prog, swap, res.offset, prog.image.nbytes, "host", prog.image.nbytes - start)
        new.part = None

    def infer(self, prog: Program, res: Residency, part: Part, inputs: list[torch.Tensor]) -> tuple[Any, float, float]:
        """Run one stage: (its outputs, exec seconds, seconds waited for its groups)."""
        graphs = self.stage(prog, part)
        stage = graphs.stage
        if len(inputs) != stage.inputs:
            raise InvalidInput(f"stage {stage.index} takes {stage.inputs} values, {len(inputs)} sent")
        if res.part is not None and (list(res.part.cuts) != list(part.cuts) or res.part.stage != part.stage):
            raise RequestFailed(f"model {prog.model_id}: stage {part.stage} is not the part resident here")
        state = res.state if res.state is not None else [prog.state[i] for i in stage.state_indices]
        swap = res.swap if res.swap is not None and not res.swap.done.is_set() else None
        module, gate = graphs.plain, graphs.gate
        if swap is not None:
            module, gate.swap, gate.waited_s = graphs.gated, swap, 0.0
        t0 = time.perf_counter()
        try:
            with torch.inference_mode():
                out = module(*state, *inputs)
        finally:
            gate.swap = None
        return out, time.perf_counter() - t0, gate.waited_s if swap is not None else 0.0
