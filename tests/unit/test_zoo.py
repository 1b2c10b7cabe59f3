from __future__ import annotations

import functools
from collections.abc import Iterator

import pytest
import torch
import torch.fx

from shared import zoo
from shared.specs import TensorSpec

MODELS = ["mlp", "resnet18", "resnet50", "resnet152", "bert-base"]

# Parameter counts of the reference implementations: torchvision's resnets and
# Hugging Face's BertModel (embeddings + encoder + pooler).
PARAMS = {
    "mlp": 64 * 256 + 256 + 256 * 256 + 256 + 256 * 10 + 10,
    "resnet18": 11_689_512,
    "resnet50": 25_557_032,
    "resnet152": 60_192_808,
    "bert-base": 109_482_240,
}

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    # Predictable timing on shared 2-core machines; restored for the other test modules.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@functools.cache
def built(name: str) -> torch.nn.Module:
    """Seed-0 model, built once per test session (bert-base takes about a second)."""
    return zoo.build(name, 0)


def example_input(spec: TensorSpec) -> torch.Tensor:
    g = torch.Generator().manual_seed(1234)
    if spec.datatype == "INT64":  # bert's token ids: one sequence of 8 tokens
        return torch.randint(0, 30522, (1, 8), generator=g)
    shape = tuple(1 if d == -1 else d for d in spec.shape)
    return torch.randn(shape, generator=g)


def inputs_for(name: str) -> tuple[torch.Tensor, ...]:
    return tuple(example_input(s) for s in zoo.entry(name).inputs)


def test_api() -> None:
    assert zoo.names() == MODELS
    assert set(zoo.ZOO) == set(MODELS)
    e = zoo.entry("bert-base")
    assert e.name == "bert-base"
    assert e.inputs == (TensorSpec("input_ids", "INT64", (-1, -1)),)
    assert e.outputs == (TensorSpec("pooled_output", "FP32", (-1, 768)),)
    assert [s.name for s in zoo.entry("mlp").inputs] == ["input"]
    assert [s.name for s in zoo.entry("mlp").outputs] == ["output"]
    for name in ("resnet18", "resnet50", "resnet152"):
        assert zoo.entry(name).inputs == (TensorSpec("input", "FP32", (-1, 3, 224, 224)),)
        assert zoo.entry(name).outputs == (TensorSpec("logits", "FP32", (-1, 1000)),)
    with pytest.raises(KeyError, match="resnet50") as info:
        zoo.entry("resnet51")
    assert "resnet51" in str(info.value)
    with pytest.raises(KeyError):
        zoo.build("nope")


@pytest.mark.parametrize("name", MODELS)
def test_seeded_weights_are_deterministic_and_ignore_the_global_rng(name: str) -> None:
    a = built(name).state_dict()
    saved = torch.random.get_rng_state()
    try:
        torch.manual_seed(999)  # a different global RNG state must not change the weights
        rng = torch.random.get_rng_state()
        b = zoo.build(name, 0).state_dict()
        c = zoo.build(name, 1).state_dict()
        assert torch.equal(torch.random.get_rng_state(), rng), "build() drew from the global RNG"
    finally:
        torch.random.set_rng_state(saved)
    assert a.keys() == b.keys() == c.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # Every random tensor changes with the seed; only the fixed buffers stay.
    same = {k for k in a if torch.equal(a[k], c[k])}
    assert all(k.endswith(("num_batches_tracked", "position_ids")) for k in same), same


@pytest.mark.parametrize("name", MODELS)
def test_eval_mode_and_parameter_count(name: str) -> None:
    model = built(name)
    assert not model.training and not any(m.training for m in model.modules())
    assert sum(p.numel() for p in model.parameters()) == PARAMS[name]


@pytest.mark.parametrize("name", MODELS)
def test_output_matches_spec_and_fx_trace_is_bitwise_equal(name: str) -> None:
    model = built(name)
    (out_spec,) = zoo.entry(name).outputs
    inputs = inputs_for(name)
    with torch.no_grad():
        eager = model(*inputs)
        traced = torch.fx.symbolic_trace(model)(*inputs)
    assert eager.dtype == torch.float32
    assert out_spec.accepts(tuple(eager.shape)) and eager.shape[0] == 1
    assert torch.isfinite(eager).all() and eager.abs().max() < 100  # activations stay in range
    assert eager.std() > 0
    assert torch.equal(eager, traced)


def test_bert_takes_any_batch_and_sequence_length() -> None:
    model = built("bert-base")
    gm = torch.fx.symbolic_trace(model)
    ids = torch.randint(0, 30522, (3, 5), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = model(ids)
        assert out.shape == (3, 768)
        assert torch.equal(gm(ids), out)
        assert (out.abs() <= 1).all()  # tanh pooler
        # Rows are independent: the first row alone gives the same pooled output.
        assert torch.allclose(model(ids[:1]), out[:1], atol=1e-5)


@pytest.mark.parametrize("name", MODELS)
def test_meta_build_is_a_weightless_skeleton_with_the_same_graph(name: str) -> None:
    with torch.device("meta"):
        skeleton = zoo.build(name, 0)
    state = skeleton.state_dict()
    assert state and all(t.is_meta for t in state.values())
    assert all(t.is_meta for t in skeleton.buffers())
    assert not skeleton.training
    real = built(name).state_dict()
    assert state.keys() == real.keys()
    assert all(state[k].shape == real[k].shape and state[k].dtype == real[k].dtype for k in real)
    # Workers trace the skeleton and bind by name: both graphs must be the same program.
    assert torch.fx.symbolic_trace(skeleton).code == torch.fx.symbolic_trace(built(name)).code


def test_batch_norm_is_not_an_identity() -> None:
    bn = built("resnet18").bn1
    assert isinstance(bn, torch.nn.BatchNorm2d)
    assert bn.running_mean is not None and bn.running_var is not None
    assert bn.running_mean.abs().sum() > 0 and (bn.running_var > 0).all()
    assert not torch.equal(bn.running_var, torch.ones_like(bn.running_var))


def test_bert_position_ids_buffer() -> None:
    emb = built("bert-base").get_submodule("embeddings")
    assert torch.equal(emb.get_buffer("position_ids"), torch.arange(512)[None])
