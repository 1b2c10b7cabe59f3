"""The CUDA backend: pinned host images, the transfer stream, per-group events, IPC peers.

These run only on a GPU host; elsewhere they are skipped with the reason.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from gpuworker.config import WorkerConfig
from shared import program, shm, zoo
from shared.modelstore import ModelImage, pack
from shared.protocol import Infer, Load, prepare_record, tensor_meta, tensor_to_wire

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; this machine has none"),
]

BUDGET = 1 << 30


def _backend(ordinal: int = 0) -> Any:
    from gpuworker.backends.cuda import CudaBackend

    return CudaBackend(WorkerConfig(ordinal, "cuda", ordinal, BUDGET, "", None, (), 1, 2 << 20))


@pytest.fixture
def image() -> Iterator[ModelImage]:
    gm = program.build({"zoo": "resnet50"}, meta=False)
    im = pack(program.packing_order(gm), shm.segment_name("gpu-test-r50"))
    yield im
    im.unlink()


def _native_cuda(x: torch.Tensor) -> bytes:
    model = zoo.build("resnet50").cuda()
    with torch.inference_mode():
        return model(x.cuda()).cpu().numpy().tobytes()


def test_pipelined_swap_on_cuda_is_bitwise_native(image: ModelImage) -> None:
    from gpuworker.executor import Executor

    backend = _backend()
    replies: dict[int, Any] = {}
    ex = Executor(backend, 2 << 20, replies.__setitem__)
    try:
        ex.prepare(prepare_record("m", {"zoo": "resnet50"}, image))
        x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
        wire = tensor_to_wire("input", "FP32", tuple(x.shape), bytearray(x.numpy().tobytes()))
        infer = Infer(model_id="m", inputs=[tensor_meta(wire)])
        ex.load(1, Load(model_id="m", offset=0))
        cold = bytes(ex.infer(infer, [wire["data"]])[1][0])
        ex.resident["m"].swap.done.wait()
        warm = bytes(ex.infer(infer, [wire["data"]])[1][0])
        assert cold == warm == _native_cuda(x)
        assert replies[1].bytes == image.nbytes
        assert backend.measure_bandwidth()["host"] > 1.0  # GB/s over pinned memory
    finally:
        ex.close()
        backend.close()


def test_nvml_reports_memory_and_links() -> None:
    from gpuworker.backends.topology import gpu_report

    report = gpu_report(0)
    assert report["total_bytes"] > 0 and 0 <= report["utilization_pct"] <= 100
    assert len(report["links"]) == torch.cuda.device_count() - 1


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="peer exchange needs two GPUs")
def test_peer_copy_over_ipc_handle(image: ModelImage) -> None:
    a, b = _backend(0), _backend(1)
    try:
        src = a.host_buffer(image.segment_name)[: image.nbytes]
        a.wait_host(a.copy(a.arena[: image.nbytes], src))
        b.open_peers({0: a.share_arena()})
        b.wait_host(b.copy(b.arena[: image.nbytes], b.peer_arena(0)[: image.nbytes]))
        assert torch.equal(b.arena[: image.nbytes].cpu(), src.cpu())
        assert b.bandwidth["peer:0"] > 1.0
    finally:
        a.close()
        b.close()


def test_serve_on_cuda_end_to_end(tmp_path: Path) -> None:
    from loadtest.server import Server
    from tests.e2e.helpers import sample_input

    srv = Server(tmp_path / "state", devices="cuda", memory="2GiB").start()
    try:
        assert srv.deploy("r50", {"model": {"zoo": "resnet50"}, "slo_ms": 100}).status_code == 201
        r = srv.invoke("r50", sample_input("resnet50"))
        assert r.status_code == 200 and r.headers["x-torpor-cold"] == "1"
        devices = srv.client.get("/v1/devices").json()["devices"]
        assert devices[0]["backend"] == "cuda" and devices[0]["link_gbps"]["host"] > 1.0
    finally:
        assert srv.stop() == 0


def test_deploy_time_profile_runs_on_the_gpu() -> None:
    from shared.profiling import profile

    gm = program.build({"zoo": "resnet50"}, meta=False)
    timing = profile(gm, zoo.entry("resnet50").inputs, max_batch=4, device=torch.device("cuda", 0))
    assert all(t.is_cuda for t in program.state_tensors(gm).values()), "profiled where it will be served"
    assert 0 < timing.exec_ms < timing.batch_exec_ms and timing.slowdown > 0
