"""The FX pass that makes execution wait for each swap group just before its first reader.

Run once per model: the result is a second GraphModule sharing the program's
submodules, with a call to the gate inserted before the first node that reads a
tensor of a group not yet waited for. The plain graph serves warm requests, so
they pay nothing for the gate.
"""

from __future__ import annotations

import time

import torch
import torch.fx

from gpuworker.backends import Backend
from gpuworker.swap import Swap
from shared.program import node_reads, state_tensors

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


def gated(
    gm: torch.fx.GraphModule, group_of: dict[str, int], backend: Backend
) -> tuple[torch.fx.GraphModule, SwapGate]:
    names = list(state_tensors(gm))
    graph = torch.fx.Graph()
    env: dict[torch.fx.Node, torch.fx.Node] = {}
    waited = -1
    for node in gm.graph.nodes:
        need = max((group_of.get(n, 0) for n in node_reads(gm, node, names)), default=-1)
        if need > waited:
            # Copies land in order, so waiting for group `need` covers all before it.
            graph.call_module(GATE, (need,))
            waited = need
        env[node] = graph.node_copy(node, lambda n: env[n])
    gate = SwapGate(backend)
    gm.add_module(GATE, gate)
    out = torch.fx.GraphModule(gm, graph)
    return out, gate
