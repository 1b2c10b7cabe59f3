"""Pipeline-parallel cold start on real CPU devices: stages cut at group boundaries, run as a pipeline, consolidated.

Two devices with shared-memory arenas and their own copy threads (as in test_swap.py); the
stages' values cross from one device's executor to the other's as frame buffers, as they
would between worker processes.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
import torch

from gpuworker.stages import cut_points, split, stage_cuts, stage_groups
from gpuworker.swap import plan_groups
from shared import program, shm, zoo
from shared.errors import InvalidInput, RequestFailed
from shared.modelstore import ModelImage, layout, pack, views
from shared.protocol import Evict, Evicted, Infer, Load, Part, prepare_record, tensor_meta, tensor_to_wire
from tests.unit.test_swap import Device, _reply

BUDGET = 128 << 20


@pytest.fixture
def devices() -> Iterator[list[Device]]:
    arenas = {i: shm.segment_name(f"test-pp-arena{i}") for i in range(2)}
    for name in arenas.values():
        shm.create(name, BUDGET).close()
    devs = [Device(i, arenas, 1 << 20) for i in range(2)]
    yield devs
    for d in devs:
        d.close()
    for name in arenas.values():
        shm.unlink(name)


@pytest.fixture(scope="module")
def resnet18() -> Iterator[ModelImage]:
    gm = program.build({"zoo": "resnet18"}, meta=False)
    image = pack(program.packing_order(gm), shm.segment_name("test-pp-r18"))
    yield image
    image.unlink()


def _x() -> torch.Tensor:
    return torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))


def _native(x: torch.Tensor) -> bytes:
    torch.set_num_threads(1)
    with torch.inference_mode():
        return zoo.build("resnet18")(x).numpy().tobytes()


@pytest.mark.parametrize("k", [2, 3])
def test_stages_cut_at_group_boundaries_are_bitwise_the_whole_graph(resnet18: ModelImage, k: int) -> None:
    lifted = program.lift(program.build({"zoo": "resnet18"}, meta=True))
    plan = plan_groups(resnet18.table, 1 << 20)
    cuts = cut_points(lifted, plan, k)
    stages = split(lifted, plan, cuts)
    assert len(stages) == k and cuts[0] == 0 and cuts[-1] == plan.groups
    seg = shm.attach(resnet18.segment_name, False)
    try:
        tensors = views(torch.frombuffer(seg.buf, dtype=torch.uint8), 0, resnet18.table)
        state = [tensors[n] for n in lifted.names]
        x = _x()
        values: Any = (x,)
        torch.set_num_threads(1)
        with torch.inference_mode():
            for st in stages:
                values = st.program.gm(*[state[i] for i in st.state_indices], *values)
                # Each stage reads only the groups its device loads.
                assert all(st.groups[0] <= plan.group_of[lifted.names[i]] < st.groups[1] for i in st.state_indices)
        assert values.numpy().tobytes() == _native(x)
        # Every state tensor the graph reads is read by some stage; the shares cover the image in order.
        read = {lifted.names.index(n) for node in lifted.gm.graph.nodes for n in lifted.reads(node)}
        assert sorted({i for st in stages for i in st.state_indices}) == sorted(read)
        assert [st.groups[0] for st in stages][0] == 0 and stages[-1].groups[1] == plan.groups
        del tensors, state
    finally:
        seg.close()


def test_prepare_reports_each_degrees_cuts_with_the_bytes_each_stage_loads(resnet18: ModelImage) -> None:
    lifted = program.lift(program.build({"zoo": "resnet18"}, meta=True))
    plan = plan_groups(resnet18.table, 1 << 20)
    reported = stage_cuts(lifted, plan)
    assert [len(c.sizes) for c in reported] == [2, 3, 4]
    for c in reported:
        stages = split(lifted, plan, tuple(c.cuts))
        assert [st.groups for st in stages] == stage_groups(lifted, plan, tuple(c.cuts))
        assert c.sizes == [plan.bounds[st.groups[1]] - plan.bounds[st.groups[0]] for st in stages]
        assert sum(c.sizes) == resnet18.nbytes  # no weight read twice: the shares tile the image


class _Tables(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Embedding(4096, 256)  # 4 MiB: a group of its own (a tensor is never split)
        self.b = torch.nn.Embedding(4096, 256)
        self.c = torch.nn.Linear(256, 8)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.c(self.a(ids) + self.b(ids))


def test_a_stage_starts_at_the_first_group_its_first_node_reads() -> None:
    """Cuts name the first group each stage's device loads, and the sizes are what it loads."""
    gm = torch.fx.symbolic_trace(_Tables())
    lifted = program.lift(gm)
    plan = plan_groups(layout(program.packing_order(gm)), 1 << 20)
    assert plan.groups == 3  # a, b, then c's weight and bias together
    assert cut_points(lifted, plan, 2) == (0, 1, 3)
    two, three = stage_cuts(lifted, plan)
    assert two.cuts == [0, 1, 3] and two.sizes == [4 << 20, plan.bounds[3] - (4 << 20)]
    assert three.cuts == [0, 1, 2, 3] and sum(three.sizes) == plan.bounds[3]


def _prepare(devs: list[Device], image: ModelImage) -> None:
    for d in devs:
        d.executor.prepare(prepare_record("r18", {"zoo": "resnet18"}, image))


def _stage(dev: Device, part: Part, metas: list[Any], buffers: list[Any]) -> tuple[list[Any], list[Any]]:
    inferred, out = dev.executor.infer(Infer(model_id="r18", inputs=metas, part=part), [bytearray(b) for b in buffers])
    return inferred.outputs, out


def test_a_cold_start_over_two_devices_runs_as_a_pipeline_and_consolidates_to_one_copy(devices, resnet18) -> None:
    a, b = devices
    _prepare(devices, resnet18)
    prog = a.executor.programs["r18"]
    cuts = list(cut_points(a.executor.lifted_of(prog), prog.plan, 2))
    first, second = Part(cuts=cuts, stage=0, whole=True), Part(cuts=cuts, stage=1)
    # Each device copies only its share, both at once; the pipeline runs while they copy.
    a.executor.load(1, Load(model_id="r18", offset=4096, part=first))
    b.executor.load(2, Load(model_id="r18", offset=0, part=second))
    share = b.executor.resident["r18"]
    lo, hi = b.executor.staging.stage(prog, second).stage.groups
    assert share.nbytes == prog.plan.bounds[hi] - prog.plan.bounds[lo] < resnet18.nbytes  # a slice of its own size
    x = _x()
    wire = tensor_to_wire("input", "FP32", tuple(x.shape), bytearray(x.numpy().tobytes()))
    metas, buffers = _stage(a, first, [tensor_meta(wire)], [wire["data"]])
    assert metas and all(m.shape != [1, 1000] for m in metas)  # activations (a block and its shortcut), handed on
    out_metas, out = _stage(b, second, metas, buffers)
    assert bytes(out[0]) == _native(x)
    with pytest.raises(RequestFailed, match="only pipeline stage 0"):
        a.executor.infer(Infer(model_id="r18", inputs=[tensor_meta(wire)]), [bytearray(wire["data"])])
    # Consolidation: the rest of the image into the first device's whole-size slice; the whole
    # model runs there (waiting per group meanwhile), and the other share is evicted.
    a.executor.resident["r18"].swap.done.wait(10)
    a.executor.load(3, Load(model_id="r18", offset=4096))
    _, whole = a.executor.infer(Infer(model_id="r18", inputs=[tensor_meta(wire)]), [bytearray(wire["data"])])
    assert bytes(whole[0]) == _native(x)
    assert 0 < _reply(a, 3).bytes < resnet18.nbytes  # only what its share lacked
    assert b.executor.evict(Evict(model_id="r18")) == Evicted(evicted=True)
    holders = [i for i, d in enumerate(devices) if "r18" in d.executor.resident]
    assert holders == [0], "consolidation leaves one copy"
    assert a.executor.resident["r18"].part is None and a.executor.resident["r18"].nbytes == resnet18.nbytes
    with pytest.raises(RequestFailed, match="not resident"):
        _stage(b, second, metas, buffers)


def test_bad_parts_are_refused(devices, resnet18) -> None:
    a, _ = devices
    _prepare(devices, resnet18)
    groups = a.executor.programs["r18"].plan.groups
    with pytest.raises(InvalidInput, match="must rise from 0"):
        a.executor.load(1, Load(model_id="r18", offset=0, part=Part(cuts=[0, 3, 2, groups], stage=0)))
    with pytest.raises(InvalidInput, match="stage 5 of 2"):
        a.executor.load(1, Load(model_id="r18", offset=0, part=Part(cuts=[0, 3, groups], stage=5)))
    a.executor.load(
        2, msgspec.convert({"model_id": "r18", "offset": 0, "part": {"cuts": [0, 3, groups], "stage": 1}}, Load)
    )
    with pytest.raises(InvalidInput, match="only the first stage"):
        a.executor.load(3, Load(model_id="r18", offset=0))  # stage 1's share is not consolidated
    x = torch.zeros(1, 8)
    meta = tensor_meta(tensor_to_wire("h", "FP32", (1, 8), bytearray(x.numpy().tobytes())))
    with pytest.raises(InvalidInput, match=r"takes \d values, 5 sent"):
        _stage(a, Part(cuts=[0, 3, groups], stage=1), [meta] * 5, [x.numpy().tobytes()] * 5)
