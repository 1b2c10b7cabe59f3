"""The FX pass that makes execution wait for each swap group just before its first reader.

Run once per lifted program and swap plan: the result is a second GraphModule sharing
the program's submodules, with a call to the gate inserted before the first node that
takes a state tensor of a group not yet waited for. The plain graph serves warm
requests, so they pay nothing for the gate.
"""

from __future__ import annotations

import time

import torch
import torch.fx

from gpuworker.backends import Backend
from gpuworker.swap import Swap
from shared.program import Lifted, owner

GATE = "_torpor_gate"


class SwapGate(torch.nn.Module):
    """Blocks until group k of the current swap has landed; a no-op when none is in flight."""

    def __init__(self, backend: Backend) -> None:
        super().__init__()
        self.backend = backend
        self.swap: Swap | None = None
        self.waited_s = 0.0

    def forward(self, k: int) -> None:
        swap = self.swap
        if swap is not None:
            t0 = time.perf_counter()
            swap.wait_group(k, self.backend)
            self.waited_s += time.perf_counter() - t0


def gated(program: Lifted, group_of: dict[str, int], backend: Backend) -> tuple[torch.fx.GraphModule, SwapGate]:
    graph = torch.fx.Graph()
    env: dict[torch.fx.Node, torch.fx.Node] = {}
    waited = -1
    for node in program.gm.graph.nodes:
        need = max((group_of[n] for n in program.reads(node)), default=-1)
        if need > waited:
            # Copies land in order, so waiting for group `need` covers all before it.
            graph.call_module(GATE, (need,))
            waited = need
        env[node] = graph.node_copy(node, lambda n: env[n])
    gate = SwapGate(backend)
    # The lifted program's own modules and constants, shared, not copied; and the gate.
    attrs: dict[str, object] = {
        n.target: getattr(*owner(program.gm, n.target))
        for n in program.gm.graph.nodes
        if n.op in ("call_module", "get_attr") and isinstance(n.target, str)
    }
    attrs[GATE] = gate
    return torch.fx.GraphModule(attrs, graph), gate
