"""The worker's swap engine, gate and executor on real CPU devices (shared-memory arenas)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
import torch

from gpuworker.backends.cpu import CpuBackend
from gpuworker.config import WorkerConfig
from gpuworker.executor import Executor
from gpuworker.gate import GATE
from gpuworker.swap import HostFill, plan_groups
from shared import program, shm, zoo
from shared.errors import RequestFailed
from shared.modelstore import ModelImage, pack
from shared.protocol import Evict, Evicted, Fill, Forget, Infer, Load, prepare_record, tensor_meta, tensor_to_wire

BUDGET = 128 << 20


class Device:
    def __init__(self, index: int, arenas: dict[int, str], group_bytes: int) -> None:
        peers = tuple((i, n) for i, n in arenas.items() if i != index)
        cfg = WorkerConfig(index, "cpu", index, BUDGET, "", arenas[index], peers, 1, group_bytes)
        self.backend = CpuBackend(cfg)
        self.replies: dict[int, Any] = {}
        self.executor = Executor(self.backend, group_bytes, self.replies.__setitem__)

    def close(self) -> None:
        self.executor.close()
        self.backend.close()


@pytest.fixture
def devices(request: pytest.FixtureRequest) -> Iterator[list[Device]]:
    group_bytes = getattr(request, "param", 64 << 10)  # small groups: many waits
    arenas = {i: shm.segment_name(f"test-arena{i}") for i in range(2)}
    for name in arenas.values():
        shm.create(name, BUDGET).close()
    devs = [Device(i, arenas, group_bytes) for i in range(2)]
    yield devs
    for d in devs:
        d.close()
    for name in arenas.values():
        shm.unlink(name)


@pytest.fixture
def resnet18() -> Iterator[ModelImage]:
    gm = program.build({"zoo": "resnet18"}, meta=False)
    image = pack(program.packing_order(gm), shm.segment_name("test-r18"))
    yield image
    image.unlink()


def _input() -> tuple[dict[str, Any], torch.Tensor]:
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    return tensor_to_wire("input", "FP32", (1, 3, 64, 64), x.numpy().tobytes()), x


def _native(x: torch.Tensor) -> bytes:
    torch.set_num_threads(1)
    with torch.inference_mode():
        return zoo.build("resnet18")(x).numpy().tobytes()


def _prepare(dev: Device, image: ModelImage) -> None:
    dev.executor.prepare(prepare_record("r18", {"zoo": "resnet18"}, image))


def _infer(dev: Device, wire: dict[str, Any]) -> bytes:
    _, outputs = dev.executor.infer(Infer(model_id="r18", inputs=[tensor_meta(wire)]), [bytearray(wire["data"])])
    return bytes(outputs[0])


def test_groups_cover_the_image_in_whole_tensors(resnet18: ModelImage) -> None:
    plan = plan_groups(resnet18.table, 2 << 20)
    assert plan.bounds[0] == 0 and plan.bounds[-1] == resnet18.nbytes
    assert list(plan.bounds) == sorted(set(plan.bounds))
    starts = {e.offset for e in resnet18.table.entries}
    assert set(plan.bounds[1:-1]) <= starts  # never cut through a tensor
    for k in range(plan.groups - 1):
        assert plan.bounds[k + 1] - plan.bounds[k] >= 2 << 20
    assert 5 <= plan.groups <= 23  # ~45 MiB in groups of >= 2 MiB (single tensors reach 9 MiB)
    for e in resnet18.table.entries:
        k = plan.group_of[e.name]
        assert plan.bounds[k] <= e.offset < plan.bounds[k + 1]


def test_gate_waits_before_the_first_reader_of_each_group(resnet18: ModelImage) -> None:
    from gpuworker.gate import gated

    lifted = program.lift(program.build({"zoo": "resnet18"}, meta=True))
    plan = plan_groups(resnet18.table, 2 << 20)
    g, _ = gated(lifted, plan.group_of, None)  # type: ignore[arg-type]
    waited = -1
    waits = []
    for node in g.graph.nodes:
        if node.op == "call_module" and node.target == GATE:
            waited = node.args[0]
            waits.append(waited)
            continue
        for n in lifted.reads(node):
            assert plan.group_of[n] <= waited, f"{node} reads group {plan.group_of[n]} before waiting for it"
    assert waits == sorted(waits) and waits[-1] == plan.groups - 1


def test_pipelined_cold_start_is_bitwise_native_and_reports_the_swap(
    devices: list[Device], resnet18: ModelImage
) -> None:
    dev = devices[0]
    _prepare(dev, resnet18)
    wire, x = _input()
    dev.executor.load(7, msgspec.convert({"model_id": "r18", "offset": 4096}, Load))
    cold = _infer(dev, wire)  # runs while the copy is still going
    dev.executor.resident["r18"].swap.done.wait()
    assert dev.replies[7].bytes == resnet18.nbytes and dev.replies[7].source == "host"
    warm = _infer(dev, wire)
    assert cold == warm == _native(x)


def test_peer_copy_from_another_devices_arena(devices: list[Device], resnet18: ModelImage) -> None:
    a, b = devices
    for d in devices:
        _prepare(d, resnet18)
    a.executor.load(1, msgspec.convert({"model_id": "r18", "offset": 8192}, Load))
    a.executor.resident["r18"].swap.done.wait()
    wire, x = _input()
    b.executor.load(2, msgspec.convert({"model_id": "r18", "offset": 0, "peer": {"device": 0, "offset": 8192}}, Load))
    out = _infer(b, wire)
    b.executor.resident["r18"].swap.done.wait()
    assert b.replies[2].source == "peer:0"
    assert out == _native(x)


def test_evict_mid_swap_cancels_and_leaves_nothing_resident(devices: list[Device], resnet18: ModelImage) -> None:
    dev = devices[0]
    _prepare(dev, resnet18)
    dev.executor.load(3, msgspec.convert({"model_id": "r18", "offset": 0}, Load))
    assert dev.executor.evict(Evict(model_id="r18")) == Evicted(evicted=True)
    assert "r18" not in dev.executor.resident
    reply = dev.replies[3]
    if isinstance(reply, Exception):  # cancelled before the last group (the usual case)
        assert isinstance(reply, RequestFailed) and "cancelled" in reply.message
    wire, x = _input()
    with pytest.raises(RequestFailed, match="not resident"):
        _infer(dev, wire)
    dev.executor.load(4, msgspec.convert({"model_id": "r18", "offset": 0}, Load))  # the slice is free again
    assert _infer(dev, wire) == _native(x)


def test_overlapping_or_out_of_range_loads_are_refused(devices: list[Device], resnet18: ModelImage) -> None:
    from shared.errors import InvalidInput

    dev = devices[0]
    _prepare(dev, resnet18)
    with pytest.raises(InvalidInput, match="outside the arena"):
        dev.executor.load(5, msgspec.convert({"model_id": "r18", "offset": BUDGET - 4096}, Load))
    dev.executor.load(6, msgspec.convert({"model_id": "r18", "offset": 0}, Load))
    with pytest.raises(InvalidInput, match="already resident"):
        dev.executor.load(7, msgspec.convert({"model_id": "r18", "offset": 1 << 26}, Load))


def _disk_image(tmp_path, image: ModelImage):
    """The image written to a file, and an empty host segment of its size (the disk tier)."""
    from shared import imagefile

    src = shm.attach(image.segment_name, writable=False)
    path = imagefile.write(tmp_path / "r18.img", "r18", image.table, src.buf, chunk_bytes=256 << 10)
    src.close()
    empty = ModelImage(shm.segment_name("test-r18-from-disk"), image.table)
    shm.create(empty.segment_name, image.nbytes).close()
    return path, empty


def test_a_swap_from_disk_fills_the_host_image_and_runs_bitwise_equal(devices, resnet18, tmp_path) -> None:
    """disk -> host -> device -> execution, group by group; the host image is whole afterwards."""
    path, empty = _disk_image(tmp_path, resnet18)
    try:
        dev = devices[0]
        _prepare(dev, empty)
        wire, x = _input()
        dev.executor.load(1, msgspec.convert({"model_id": "r18", "offset": 0, "fill_from": str(path)}, Load))
        assert _infer(dev, wire) == _native(x)  # may run while groups still arrive
        dev.executor.resident["r18"].swap.done.wait(10)
        assert dev.replies[1].source == "disk"
        filled, orig = shm.attach(empty.segment_name, False), shm.attach(resnet18.segment_name, False)
        assert bytes(filled.buf[: resnet18.nbytes]) == bytes(orig.buf[: resnet18.nbytes])
        filled.close()
        orig.close()
    finally:
        empty.unlink()


def test_a_host_fill_waits_for_the_inferences_running_then_not_for_later_ones() -> None:
    """The disk reader copies the arena into the host image only once the request's inference ended."""
    fill = HostFill()
    fill.wait_runs()  # nothing running: at once
    fill.run_started()
    waited = threading.Event()
    threading.Thread(target=lambda: (fill.wait_runs(), waited.set()), daemon=True).start()
    assert not waited.wait(0.2), "the copy started beside the running inference"
    fill.run_started()  # a later one cannot hold the copy back for ever
    fill.run_ended()
    assert waited.wait(5)
    fill.cancel()
    fill.wait_runs()  # a cancelled fill never waits (one run is still in flight here)


def test_a_damaged_image_file_fails_the_swap_and_leaves_nothing_resident(devices, resnet18, tmp_path) -> None:
    from shared import imagefile

    path, empty = _disk_image(tmp_path, resnet18)
    info = imagefile.read_info(path)
    with open(path, "r+b") as f:
        f.seek(info.data_offset + info.nbytes - 10)
        f.write(b"\xff" * 4)
    try:
        dev = devices[0]
        _prepare(dev, empty)
        wire, _ = _input()
        dev.executor.load(1, msgspec.convert({"model_id": "r18", "offset": 0, "fill_from": str(path)}, Load))
        # The copy thread may meet the damage and drop the model before the inference is sent:
        # then the inference finds nothing resident; either way the load's reply says why.
        with pytest.raises(RequestFailed, match="fails its checksum|not resident"):
            _infer(dev, wire)
        reply = _reply(dev, 1)
        assert isinstance(reply, RequestFailed) and "fails its checksum" in reply.message
        assert "r18" not in dev.executor.resident
    finally:
        empty.unlink()


def test_an_eviction_during_a_fill_from_disk_stops_all_writes_into_the_slice(devices, resnet18, tmp_path) -> None:
    """A CPU device reads the file straight into its arena: once evicted, the slice must be left alone."""
    path, empty = _disk_image(tmp_path, resnet18)
    try:
        dev = devices[0]
        _prepare(dev, empty)
        dev.executor.load(1, msgspec.convert({"model_id": "r18", "offset": 0, "fill_from": str(path)}, Load))
        swap = dev.executor.resident["r18"].swap
        assert dev.executor.evict(Evict(model_id="r18")) == Evicted(evicted=True)
        assert swap.fill is not None and swap.fill.finished.is_set()
        arena = dev.backend.arena[: resnet18.nbytes]
        arena.zero_()  # the next model's bytes, say
        time.sleep(0.2)
        assert not arena.any(), "the reader wrote into the slice after the eviction"
        assert swap.done.is_set() and "r18" not in dev.executor.resident
    finally:
        empty.unlink()


def test_functions_of_one_architecture_share_one_graph(devices: list[Device], resnet18: ModelImage) -> None:
    ex = devices[0].executor
    for model_id in ("a", "b"):
        ex.prepare(prepare_record(model_id, {"zoo": "resnet18"}, resnet18))
    assert len(ex.shared) == 1 and ex.programs["a"].graphs is ex.programs["b"].graphs
    wire, x = _input()
    for model_id, offset in (("a", 0), ("b", 64 << 20)):  # both resident at once, each on its own views
        ex.load(1, msgspec.convert({"model_id": model_id, "offset": offset}, Load))
        ex.resident[model_id].swap.done.wait()
        _, out = ex.infer(Infer(model_id=model_id, inputs=[tensor_meta(wire)]), [bytearray(wire["data"])])
        assert bytes(out[0]) == _native(x)
    ex.forget(msgspec.convert({"model_id": "a"}, Forget))
    assert len(ex.shared) == 1
    ex.forget(msgspec.convert({"model_id": "b"}, Forget))
    assert ex.shared == {}, "the last function to go takes the graphs with it"


def _reply(dev: Device, rid: int) -> Any:
    """The swap's reply, which the copy thread sends last (after the swap's done event)."""
    deadline = time.monotonic() + 10
    while rid not in dev.replies and time.monotonic() < deadline:
        time.sleep(0.01)
    return dev.replies[rid]


def _feed(dev: Device, src: ModelImage, dst: ModelImage, follow: int, fail_at: int | None = None) -> threading.Thread:
    """What the gateway does for an image arriving from other nodes: write it in, report each step."""

    def run() -> None:
        a, b = shm.attach(src.segment_name, False), shm.attach(dst.segment_name, True)
        step = 1 << 20
        for lo in range(0, src.nbytes, step):
            hi = min(lo + step, src.nbytes)
            if fail_at is not None and hi > fail_at:
                dev.executor.feed(Fill(follow=follow, ready=lo, error="holder b: chunk 3 fails its checksum"))
                break
            b.buf[lo:hi] = a.buf[lo:hi]
            time.sleep(0.002)
            dev.executor.feed(Fill(follow=follow, ready=hi, complete=hi == src.nbytes))
        a.close()
        b.close()

    t = threading.Thread(target=run)
    t.start()
    return t


def test_a_swap_following_an_image_from_other_nodes_runs_bitwise_equal(devices, resnet18) -> None:
    """node -> host -> device -> execution: each group is copied once its bytes are reported verified."""
    empty = ModelImage(shm.segment_name("test-r18-arriving"), resnet18.table)
    shm.create(empty.segment_name, resnet18.nbytes).close()
    try:
        dev = devices[0]
        _prepare(dev, empty)
        wire, x = _input()
        dev.executor.load(1, msgspec.convert({"model_id": "r18", "offset": 0, "follow": 9, "ready": 0}, Load))
        feeder = _feed(dev, resnet18, empty, 9)
        assert _infer(dev, wire) == _native(x)  # started before any byte had arrived
        feeder.join()
        assert _reply(dev, 1).source == "node" and dev.executor.fills.pending == {}
    finally:
        empty.unlink()


def test_a_failed_transfer_fails_the_following_swap_and_an_eviction_never_hangs(devices, resnet18) -> None:
    empty = ModelImage(shm.segment_name("test-r18-arriving"), resnet18.table)
    shm.create(empty.segment_name, resnet18.nbytes).close()
    try:
        dev = devices[0]
        _prepare(dev, empty)
        wire, _ = _input()
        dev.executor.load(1, msgspec.convert({"model_id": "r18", "offset": 0, "follow": 4}, Load))
        feeder = _feed(dev, resnet18, empty, 4, fail_at=resnet18.nbytes // 2)
        with pytest.raises(RequestFailed, match="fails its checksum|not resident"):
            _infer(dev, wire)  # (not resident: the transfer failed before execution began)
        feeder.join()
        assert isinstance(_reply(dev, 1), RequestFailed) and "r18" not in dev.executor.resident
        # A swap waiting for bytes that never come is released by an eviction.
        dev.executor.load(2, msgspec.convert({"model_id": "r18", "offset": 0, "follow": 5}, Load))
        assert dev.executor.evict(Evict(model_id="r18")) == Evicted(evicted=True)
        assert "cancelled" in _reply(dev, 2).message and dev.executor.fills.pending == {}
    finally:
        empty.unlink()
