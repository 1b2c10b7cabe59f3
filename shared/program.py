"""A model's program: its computation as an FX graph, separate from its weights.

Workers keep one weight-less skeleton (tensors on the meta device) per model and
bind it to views of the device arena when the model becomes resident. The same
graph gives the first-use order in which the host image is packed and swapped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.fx

from shared.errors import InvalidInput
from shared.specs import TensorSpec

# torch dtype <-> KServe datatype; BF16 travels as raw 2-byte words.
TORCH_TO_KSERVE: dict[torch.dtype, str] = {
    torch.bool: "BOOL",
    torch.uint8: "UINT8",
    torch.uint16: "UINT16",
    torch.uint32: "UINT32",
    torch.uint64: "UINT64",
    torch.int8: "INT8",
    torch.int16: "INT16",
    torch.int32: "INT32",
    torch.int64: "INT64",
    torch.float16: "FP16",
    torch.float32: "FP32",
    torch.float64: "FP64",
    torch.bfloat16: "BF16",
}
KSERVE_TO_TORCH = {v: k for k, v in TORCH_TO_KSERVE.items()}


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def dtype_from_name(name: str) -> torch.dtype:
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown dtype {name!r}")
    return dtype


def build(source: dict[str, Any], *, meta: bool) -> torch.fx.GraphModule:
    """Build the program for a model source ({"zoo": name, "seed": n} or {"pt2": path})."""
    if "zoo" in source:
        from shared import zoo

        if meta:
            with torch.device("meta"):
                module = zoo.build(source["zoo"], int(source.get("seed", 0)))
        else:
            module = zoo.build(source["zoo"], int(source.get("seed", 0)))
        return torch.fx.symbolic_trace(module)
    if "pt2" in source:
        from shared.pt2file import load_program

        gm = load_program(Path(source["pt2"])).module()
        # The loaded weights are dropped at once: a worker must not keep a private copy.
        return gm.to("meta") if meta else gm
    raise InvalidInput(f"model source must name 'zoo' or 'pt2', got {sorted(source)}")


def owner(gm: torch.nn.Module, dotted: str) -> tuple[torch.nn.Module, str]:
    prefix, _, leaf = dotted.rpartition(".")
    return (gm.get_submodule(prefix) if prefix else gm), leaf


def state_tensors(gm: torch.fx.GraphModule) -> dict[str, torch.Tensor]:
    """Every tensor the program reads that is not an input: params, buffers, constants."""
    tensors: dict[str, torch.Tensor] = {}
    for name, p in gm.named_parameters(remove_duplicate=False):
        tensors[name] = p
    for name, b in gm.named_buffers(remove_duplicate=False):
        tensors[name] = b
    for node in gm.graph.nodes:
        if node.op == "get_attr" and node.target not in tensors:
            mod, leaf = owner(gm, node.target)
            value = getattr(mod, leaf)
            if isinstance(value, torch.Tensor):
                tensors[node.target] = value
    return tensors


def node_reads(gm: torch.fx.GraphModule, node: torch.fx.Node, names: list[str]) -> list[str]:
    """State tensors `node` reads: a leaf module's own tensors, or get_attr arguments.

    A get_attr node is not itself a read: export hoists them all to the top, so
    the read is the first node that takes it as an argument.
    """
    reads: list[str] = []
    if node.op == "call_module":
        prefix = f"{node.target}."
        reads.extend(n for n in names if n.startswith(prefix))
    reads.extend(a.target for a in node.all_input_nodes if a.op == "get_attr")
    return reads


def first_use_order(gm: torch.fx.GraphModule) -> list[str]:
    """State tensor names in the order execution first reads them; unused ones last."""
    names = list(state_tensors(gm))
    known = set(names)
    order: dict[str, None] = {}
    for node in gm.graph.nodes:
        for name in node_reads(gm, node, names):
            if name in known:
                order.setdefault(name)
    order.update((n, None) for n in names)
    return list(order)


def packing_order(gm: torch.fx.GraphModule) -> list[tuple[str, torch.Tensor]]:
    """The program's state tensors, named, in the order a host image packs them."""
    tensors = state_tensors(gm)
    return [(n, tensors[n]) for n in first_use_order(gm)]


def bind(gm: torch.fx.GraphModule, tensors: dict[str, torch.Tensor]) -> None:
    """Point the program's state at `tensors` (views into an arena, or meta tensors)."""
    for name, value in tensors.items():
        mod, leaf = owner(gm, name)
        if leaf in mod._parameters:
            mod._parameters[leaf] = torch.nn.Parameter(value, requires_grad=False)
        elif leaf in mod._buffers:
            mod._buffers[leaf] = value
        else:
            setattr(mod, leaf, value)


def _spec_from_value(name: str, value: Any) -> TensorSpec:
    if not isinstance(value, torch.Tensor):
        raise InvalidInput(f"tensor {name!r} of the program is not a tensor ({type(value).__name__})")
    if value.dtype not in TORCH_TO_KSERVE:
        raise InvalidInput(f"tensor {name!r} has unsupported dtype {value.dtype}")
    shape = tuple(d if isinstance(d, int) else -1 for d in value.shape)
    return TensorSpec(name, TORCH_TO_KSERVE[value.dtype], shape)


def exported_signature(path: Path) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """Input and output specs of a .pt2 program, from its graph's tensor metadata."""
    from shared.pt2file import load_program

    ep = load_program(path)
    user_inputs = set(ep.graph_signature.user_inputs)
    inputs = tuple(
        _spec_from_value(n.name, n.meta.get("val"))
        for n in ep.graph.nodes
        if n.op == "placeholder" and n.name in user_inputs
    )
    out_node = next(n for n in ep.graph.nodes if n.op == "output")
    results = out_node.args[0]
    outputs = tuple(
        _spec_from_value(f"output{i}" if len(results) > 1 else "output", r.meta.get("val"))
        for i, r in enumerate(results)
    )
    return inputs, outputs
