"""The model zoo: standard architectures written in torch.nn, with seeded weights (no downloads).

Every model is traceable by ``torch.fx.symbolic_trace`` and builds under
``with torch.device("meta"):``, which is how workers make weight-less skeletons
that they later bind to weights in shared memory.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from shared.specs import TensorSpec
from shared.zoo import bert, mlp, resnet


@dataclass(frozen=True)
class ZooEntry:
    name: str
    builder: Callable[[], nn.Module]  # the bare architecture; build() gives it seeded weights
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    description: str


# Scale of the last norm weight of each residual branch. Eval-mode batch norm over
# random statistics renormalises nothing, so at full scale every block would grow
# the signal: resnet152's logits would reach ~1e3 instead of ~1.
RESIDUAL_SCALE = 0.2

_IMAGE = (TensorSpec("input", "FP32", (-1, 3, 224, 224)),)
_LOGITS = (TensorSpec("logits", "FP32", (-1, 1000)),)

ZOO: dict[str, ZooEntry] = {
    e.name: e
    for e in (
        ZooEntry(
            "mlp",
            mlp.mlp,
            (TensorSpec("input", "FP32", (-1, mlp.IN_FEATURES)),),
            (TensorSpec("output", "FP32", (-1, mlp.OUT_FEATURES)),),
            "tiny 64-256-256-10 perceptron, for measuring serving overhead",
        ),
        ZooEntry("resnet18", resnet.resnet18, _IMAGE, _LOGITS, "ResNet-18 (ImageNet, 1000 classes, 11.7M params)"),
        ZooEntry("resnet50", resnet.resnet50, _IMAGE, _LOGITS, "ResNet-50 v1.5 (ImageNet, 1000 classes, 25.6M params)"),
        ZooEntry(
            "resnet152", resnet.resnet152, _IMAGE, _LOGITS, "ResNet-152 v1.5 (ImageNet, 1000 classes, 60.2M params)"
        ),
        ZooEntry(
            "bert-base",
            bert.bert_base,
            (TensorSpec("input_ids", "INT64", (-1, -1)),),
            (TensorSpec("pooled_output", "FP32", (-1, bert.HIDDEN)),),
            "BERT-base encoder with pooler (12 layers, hidden 768, 109.5M params); token ids in, pooled output out",
        ),
    )
}


def names() -> list[str]:
    return list(ZOO)


def entry(name: str) -> ZooEntry:
    try:
        return ZOO[name]
    except KeyError:
        raise KeyError(f"unknown zoo model {name!r}; known: {', '.join(ZOO)}") from None


def build(name: str, seed: int = 0) -> nn.Module:
    """The model `name` in eval mode on the current default device, its weights a function of (name, seed) only.

    Under ``torch.device("meta")`` the result is a skeleton of meta tensors with no init.
    """
    builder = entry(name).builder
    target = torch.get_default_device()
    # Construct on meta and fill in afterwards: torch's default init would draw from
    # the global RNG and, for bert-base, take about a second only to be overwritten.
    with torch.device("meta"):
        model = builder()
    if target.type != "meta":
        # Always fill on the CPU so the weights do not depend on the device's RNG.
        _materialise(model)
        init_weights(model, seed)
        if target.type != "cpu":
            model = model.to(target)
    return model.eval()


def _materialise(model: nn.Module) -> None:
    """Give every meta tensor of `model` uninitialised CPU storage of the same shape and dtype.

    Not ``Module.to_empty``: its meta ``empty_like`` goes through torch._refs, whose first
    use imports sympy (most of a second in a fresh process). The zoo ties no weights.
    """
    for module in model.modules():
        for key, p in list(module.named_parameters(recurse=False)):
            setattr(module, key, nn.Parameter(torch.empty(p.shape, dtype=p.dtype), requires_grad=p.requires_grad))
        for key, b in list(module.named_buffers(recurse=False)):
            setattr(module, key, torch.empty(b.shape, dtype=b.dtype))


@torch.no_grad()
def init_weights(model: nn.Module, seed: int) -> None:
    """Set every parameter and buffer of `model` from a private generator seeded with `seed`.

    Raises TypeError for a module holding tensors this function does not know how to
    set, rather than leaving them uninitialised memory.
    """
    g = torch.Generator(device="cpu").manual_seed(seed)
    for qualname, module in model.named_modules():
        has_own = next(module.parameters(recurse=False), None) is not None or (
            next(module.buffers(recurse=False), None) is not None
        )
        if has_own and not _init_module(module, g):
            raise TypeError(f"zoo init: no rule for {qualname or 'the root'} ({type(module).__name__})")
    for module in model.modules():
        if isinstance(module, (resnet.BasicBlock, resnet.Bottleneck)):
            module.residual_norm().weight.mul_(RESIDUAL_SCALE)


def _init_module(module: nn.Module, g: torch.Generator) -> bool:
    """Initialise `module`'s own tensors; False if it is of a kind not handled here."""
    if isinstance(module, nn.Conv2d):
        fan_in = module.weight[0].numel()
        module.weight.normal_(0.0, (2.0 / fan_in) ** 0.5, generator=g)  # He init, ReLU-preserving
        if module.bias is not None:
            module.bias.normal_(0.0, 0.02, generator=g)
    elif isinstance(module, nn.BatchNorm2d):
        # Non-trivial statistics so that batch norm is not an identity.
        module.weight.uniform_(0.5, 1.0, generator=g)
        module.bias.normal_(0.0, 0.05, generator=g)
        assert module.running_mean is not None and module.running_var is not None  # zoo BNs track stats
        module.running_mean.normal_(0.0, 0.05, generator=g)
        module.running_var.uniform_(0.5, 1.5, generator=g)
        if module.num_batches_tracked is not None:
            module.num_batches_tracked.zero_()
    elif isinstance(module, nn.Linear):
        module.weight.normal_(0.0, 0.02, generator=g)
        if module.bias is not None:
            module.bias.normal_(0.0, 0.02, generator=g)
    elif isinstance(module, nn.Embedding):
        module.weight.normal_(0.0, 0.02, generator=g)
    elif isinstance(module, nn.LayerNorm):
        module.weight.normal_(1.0, 0.02, generator=g)
        module.bias.normal_(0.0, 0.02, generator=g)
    else:
        # A zoo module's own buffers (e.g. bert's position ids) are fixed, not random.
        reset = getattr(module, "reset_buffers", None)
        if not callable(reset):
            return False
        reset()
    return True
