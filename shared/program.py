"""A model's program: its computation as an FX graph, separate from its weights.

The builder traces a model to pack its host image in the order execution first
reads each tensor. Workers run the program *lifted* (`lift`): every state tensor
becomes a leading argument, so the graph holds no weights and one copy of it
serves every function of the same architecture; a function is then only a list
of tensor views into the device arena, passed on each call.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.fx
import torch.nn.functional as F  # noqa: N812 - the name PyTorch's own code uses

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


@dataclass(frozen=True)
class Lifted:
    """`gm(*state, *inputs)`: a program whose state tensors are its leading arguments."""

    gm: torch.fx.GraphModule
    names: tuple[str, ...]  # the state tensors' names, in argument order
    key: str  # equal for programs that compute the same function of (state, inputs)

    def reads(self, node: torch.fx.Node) -> list[str]:
        """The state tensors `node` takes as arguments."""
        return [self.names[_state_index(a)] for a in node.all_input_nodes if _state_index(a) >= 0]


STATE_ARG = "torpor_state_"  # a prefix no model input is likely to have


def _state_index(node: torch.fx.Node) -> int:
    target = node.target
    if node.op == "placeholder" and isinstance(target, str) and target.startswith(STATE_ARG):
        index = target[len(STATE_ARG) :]
        return int(index) if index.isdigit() else -1
    return -1


# A leaf module with tensors of its own, as the functional call its forward makes (eval mode):
# (function, its tensors in argument order, the module's other arguments after them).
_Call = tuple[Callable[..., Any], tuple[str, ...], tuple[Any, ...]]


def _conv(fn: Callable[..., Any]) -> Callable[[Any], _Call]:
    def call(m: Any) -> _Call:
        if m.padding_mode != "zeros":
            raise InvalidInput(f"{type(m).__name__} with padding_mode={m.padding_mode!r} is not supported")
        return fn, ("weight", "bias"), (m.stride, m.padding, m.dilation, m.groups)

    return call


def _batch_norm(m: Any) -> _Call:
    if m.training or m.running_mean is None:
        raise InvalidInput(f"{type(m).__name__} must be in eval mode with running statistics")
    # F.batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps)
    return F.batch_norm, ("running_mean", "running_var", "weight", "bias"), (False, 0.0, m.eps)


_FUNCTIONAL: dict[type[torch.nn.Module], Callable[[Any], _Call]] = {
    torch.nn.Conv1d: _conv(F.conv1d),
    torch.nn.Conv2d: _conv(F.conv2d),
    torch.nn.Conv3d: _conv(F.conv3d),
    torch.nn.Linear: lambda m: (F.linear, ("weight", "bias"), ()),
    torch.nn.BatchNorm1d: _batch_norm,
    torch.nn.BatchNorm2d: _batch_norm,
    torch.nn.BatchNorm3d: _batch_norm,
    torch.nn.Embedding: lambda m: (
        F.embedding,
        ("weight",),
        (m.padding_idx, m.max_norm, m.norm_type, m.scale_grad_by_freq, m.sparse),
    ),
}


def _layer_norm(m: Any) -> tuple[Callable[..., Any], list[Any]]:
    return F.layer_norm, [m.normalized_shape, "weight", "bias", m.eps]


def _group_norm(m: Any) -> tuple[Callable[..., Any], list[Any]]:
    return F.group_norm, [m.num_groups, "weight", "bias", m.eps]


# Modules whose tensors come after other arguments: (function, arguments with tensor names as str).
_FUNCTIONAL_MIXED: dict[type[torch.nn.Module], Callable[[Any], tuple[Callable[..., Any], list[Any]]]] = {
    torch.nn.LayerNorm: _layer_norm,
    torch.nn.GroupNorm: _group_norm,
}


def _own_tensors(m: torch.nn.Module) -> bool:
    return any(v is not None for v in (*m._parameters.values(), *m._buffers.values()))


def lift(gm: torch.fx.GraphModule) -> Lifted:
    """The program with its state tensors as arguments, and a key naming what it computes.

    Leaf modules with tensors (convolution, linear, normalisation, embedding) become the
    functional calls their forward makes, so their outputs are bitwise the same; modules
    without tensors (activations, pooling) are kept and shared. A module with tensors the
    table does not know is refused: it would carry one function's weights into the graph.
    """
    names = tuple(state_tensors(gm))
    graph = torch.fx.Graph()
    state = {n: graph.placeholder(f"{STATE_ARG}{i}") for i, n in enumerate(names)}  # argument names
    env: dict[torch.fx.Node, torch.fx.Node] = {}
    kept: dict[str, Any] = {}
    for node in gm.graph.nodes:
        if node.op == "get_attr" and node.target in state:
            env[node] = state[node.target]
            continue
        if node.op == "call_module" and _own_tensors(mod := gm.get_submodule(node.target)):
            env[node] = _functional(graph, node, mod, state, env)
            continue
        if node.op == "call_module":
            kept[node.target] = gm.get_submodule(node.target)
        elif node.op == "get_attr":
            kept[node.target] = getattr(*owner(gm, node.target))
        env[node] = graph.node_copy(node, lambda n: env[n])
    lifted = torch.fx.GraphModule(kept, graph)
    described = [lifted.code, *(f"{k}={v!r}" for k, v in sorted(kept.items()))]
    key = hashlib.sha256("\n".join(described).encode()).hexdigest()
    return Lifted(lifted, names, key)


def _functional(
    graph: torch.fx.Graph,
    node: torch.fx.Node,
    mod: torch.nn.Module,
    state: dict[str, torch.fx.Node],
    env: dict[torch.fx.Node, torch.fx.Node],
) -> torch.fx.Node:
    kind = type(mod)
    if len(node.args) != 1 or node.kwargs:
        raise InvalidInput(f"module {node.target} ({kind.__name__}) is called with more than its input")
    x = env[node.args[0]]  # type: ignore[index]

    def tensor(leaf: str) -> torch.fx.Node | None:
        return state[f"{node.target}.{leaf}"] if getattr(mod, leaf) is not None else None

    if kind in _FUNCTIONAL:
        fn, tensors, rest = _FUNCTIONAL[kind](mod)
        return graph.call_function(fn, (x, *(tensor(t) for t in tensors), *rest))
    if kind in _FUNCTIONAL_MIXED:
        fn, args = _FUNCTIONAL_MIXED[kind](mod)
        return graph.call_function(fn, (x, *(tensor(a) if isinstance(a, str) else a for a in args)))
    raise InvalidInput(
        f"module {node.target} is a {kind.__name__} with tensors of its own, which workers cannot run "
        "from shared weights; export the model with torch.export (a .pt2 file) instead"
    )
