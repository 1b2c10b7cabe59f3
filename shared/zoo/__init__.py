"""The model zoo: standard architectures built in code with seeded weights (no downloads).

Every model is traceable by torch.fx and builds under ``torch.device("meta")``,
which is how workers make weight-less skeletons.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from shared.specs import TensorSpec


@dataclass(frozen=True)
class ZooEntry:
    name: str
    builder: Callable[[], torch.nn.Module]
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    description: str


def _entries() -> dict[str, ZooEntry]:
    from shared.zoo import bert, mlp, resnet

    image = (TensorSpec("input", "FP32", (-1, 3, 224, 224)),)
    logits = (TensorSpec("logits", "FP32", (-1, 1000)),)
    return {
        "mlp": ZooEntry(
            "mlp", mlp.MLP, (TensorSpec("input", "FP32", (-1, 64)),), (TensorSpec("output", "FP32", (-1, 10)),),
            "tiny 64-256-256-10 perceptron, for overhead measurements",
        ),
        "resnet18": ZooEntry("resnet18", resnet.resnet18, image, logits, "ResNet-18 (ImageNet, 1000 classes)"),
        "resnet50": ZooEntry("resnet50", resnet.resnet50, image, logits, "ResNet-50 v1.5 (ImageNet, 1000 classes)"),
        "resnet152": ZooEntry("resnet152", resnet.resnet152, image, logits, "ResNet-152 v1.5 (ImageNet)"),
        "bert-base": ZooEntry(
            "bert-base", bert.BertBase, (TensorSpec("input_ids", "INT64", (-1, -1)),),
            (TensorSpec("pooled_output", "FP32", (-1, 768)),),
            "BERT-base encoder (12 layers, hidden 768) with pooler; token ids in, pooled output out",
        ),
    }


ZOO: dict[str, ZooEntry] = _entries()


def names() -> list[str]:
    return list(ZOO)


def entry(name: str) -> ZooEntry:
    try:
        return ZOO[name]
    except KeyError:
        raise KeyError(f"unknown zoo model {name!r}; known: {', '.join(ZOO)}") from None


def build(name: str, seed: int = 0) -> torch.nn.Module:
    """The model `name` in eval mode, its weights a function of (name, seed) only."""
    model = entry(name).builder()
    if not any(t.is_meta for t in model.state_dict().values()):
        init_weights(model, seed)
    return model.eval()


@torch.no_grad()
def init_weights(model: torch.nn.Module, seed: int) -> None:
    """Deterministic init from a private generator (never the global RNG)."""
    g = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d):
            fan_in = module.in_channels * module.kernel_size[0] * module.kernel_size[1] // module.groups
            module.weight.normal_(0.0, (2.0 / fan_in) ** 0.5, generator=g)
        elif isinstance(module, torch.nn.BatchNorm2d):
            # Non-trivial statistics so that batch norm is not an identity.
            module.weight.uniform_(0.5, 1.0, generator=g)
            module.bias.normal_(0.0, 0.05, generator=g)
            module.running_mean.normal_(0.0, 0.05, generator=g)
            module.running_var.uniform_(0.5, 1.5, generator=g)
        elif isinstance(module, (torch.nn.Linear, torch.nn.Embedding)):
            module.weight.normal_(0.0, 0.02, generator=g)
            if getattr(module, "bias", None) is not None:
                module.bias.normal_(0.0, 0.02, generator=g)
        elif isinstance(module, torch.nn.LayerNorm):
            module.weight.uniform_(0.9, 1.1, generator=g)
            module.bias.normal_(0.0, 0.02, generator=g)
