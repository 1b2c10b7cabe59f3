"""Lifted programs: state tensors as arguments, bitwise the traced model, one graph per architecture."""

from __future__ import annotations

import pytest
import torch

from shared import program, zoo
from shared.errors import InvalidInput


def _example(name: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    if name.startswith("bert"):
        return torch.randint(0, 1000, (2, 16), generator=g)
    if name == "mlp":
        return torch.randn(2, 64, generator=g)
    return torch.randn(1, 3, 64, 64, generator=g)


def _first(out: object) -> torch.Tensor:
    return out if isinstance(out, torch.Tensor) else out[0]  # type: ignore[index, return-value]


@pytest.mark.parametrize("name", zoo.names())
def test_lifted_zoo_models_are_bitwise_the_traced_ones(name: str) -> None:
    torch.set_num_threads(1)
    gm = program.build({"zoo": name, "seed": 3}, meta=False)
    lifted = program.lift(gm)
    state = program.state_tensors(gm)
    assert set(lifted.names) == set(state)
    assert not list(lifted.gm.parameters()) and not list(lifted.gm.buffers()), "the graph holds no weights"
    x = _example(name)
    with torch.inference_mode():
        want, got = _first(gm(x)), _first(lifted.gm(*(state[n] for n in lifted.names), x))
    assert torch.equal(want, got)


def test_the_key_names_the_architecture_not_the_weights() -> None:
    a = program.lift(program.build({"zoo": "resnet18", "seed": 1}, meta=True))
    b = program.lift(program.build({"zoo": "resnet18", "seed": 2}, meta=True))
    c = program.lift(program.build({"zoo": "resnet50", "seed": 1}, meta=True))
    assert a.key == b.key != c.key
    assert a.names == b.names


def test_an_exported_program_lifts() -> None:
    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(8, 4)
            self.register_buffer("scale", torch.full((4,), 2.0))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.relu(self.fc(x)) * self.scale

    net = Net().eval()
    x = torch.randn(3, 8)
    gm = torch.export.export(net, (x,)).module()
    lifted = program.lift(gm)
    state = program.state_tensors(gm)
    with torch.inference_mode():
        assert torch.equal(_first(lifted.gm(*(state[n] for n in lifted.names), x)), net(x))


def test_a_module_with_tensors_the_table_does_not_know_is_refused() -> None:
    net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.PReLU())
    with pytest.raises(InvalidInput, match=r"1 is a PReLU with tensors of its own.*torch\.export"):
        program.lift(torch.fx.symbolic_trace(net))


def test_batch_norm_in_training_mode_is_refused() -> None:
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))  # training mode
    with pytest.raises(InvalidInput, match="BatchNorm2d must be in eval mode"):
        program.lift(torch.fx.symbolic_trace(net))
