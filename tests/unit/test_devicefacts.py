"""Device facts reach the scheduler only through the workers' READY (and PEERS) replies.

A fake NVML (the pynvml module, replaced) describes a 4-GPU machine; the worker's own
report code reads it, the worker's READY body carries it through the real frame codec,
and the gateway's devicefacts module turns it into the scheduler's Topology. NVML
indices arrive as strings on the wire: a topology built by comparing them with integer
ordinals would drop every switch and NVLink fact, and these tests would fail.
"""

from __future__ import annotations

import sys
import types
from typing import Any

import msgspec
import pytest

from gateway import devicefacts
from gateway.costmodel import GB
from gpuworker.backends.topology import gpu_report
from gpuworker.config import WorkerConfig
from gpuworker.main import ready_body
from shared.errors import ProtocolError
from shared.protocol import HEADER, Kind, Ready, decode_payload, encode

# 4 GPUs: 0 and 1 behind one PCIe switch, 2 and 3 behind another; NVLink 0-2 (2 lanes) and 1-3 (1 lane).
SWITCH = {0: "a", 1: "a", 2: "b", 3: "b"}
NVLINKS = {0: [2, 2], 1: [3], 2: [0, 0], 3: [1]}
GPU_BYTES = 16 << 30


class NVMLError(Exception):
    pass


def fake_pynvml() -> types.ModuleType:
    """The part of pynvml that gpuworker/backends/topology.py reads, answering for the machine above."""
    m = types.ModuleType("pynvml")
    m.NVMLError = NVMLError  # type: ignore[attr-defined]
    m.NVML_FEATURE_ENABLED = 1  # type: ignore[attr-defined]
    m.nvmlInit = lambda: None  # type: ignore[attr-defined]
    m.nvmlShutdown = lambda: None  # type: ignore[attr-defined]
    m.nvmlDeviceGetCount = lambda: len(SWITCH)  # type: ignore[attr-defined]
    m.nvmlDeviceGetHandleByIndex = lambda i: i  # type: ignore[attr-defined]
    m.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(
        total=GPU_BYTES, used=1 << 30, free=GPU_BYTES - (1 << 30)
    )  # type: ignore[attr-defined]  # noqa: E501
    m.nvmlDeviceGetUtilizationRates = lambda h: types.SimpleNamespace(gpu=0)  # type: ignore[attr-defined]
    m.nvmlDeviceGetPciInfo = lambda h: types.SimpleNamespace(busId=f"00000000:{h + 1:02X}:00.0".encode())  # type: ignore[attr-defined]  # noqa: E501
    # 10: same PCIe switch, 30: only the host bridge in common
    m.nvmlDeviceGetTopologyCommonAncestor = lambda a, b: 10 if SWITCH[a] == SWITCH[b] else 30  # type: ignore[attr-defined]  # noqa: E501

    def link_state(h: int, link: int) -> int:
        if link >= len(NVLINKS[h]):
            raise NVMLError("no such link")
        return 1

    m.nvmlDeviceGetNvLinkState = link_state  # type: ignore[attr-defined]
    m.nvmlDeviceGetNvLinkRemotePciInfo = lambda h, link: m.nvmlDeviceGetPciInfo(NVLINKS[h][link])  # type: ignore[attr-defined]  # noqa: E501
    return m


class ReportingBackend:
    """What a CUDA backend reports (its info() is NVML plus measured copies); no GPU needed."""

    def __init__(self, ordinal: int, budget: int, host_gbps: float) -> None:
        self.ordinal = ordinal
        self.arena = types.SimpleNamespace(numel=lambda: budget)
        self.bandwidth = {"host": host_gbps}

    def share_arena(self) -> list[Any]:
        return [b"ipc-handle", self.ordinal]

    def info(self) -> dict[str, object]:
        return {
            "backend": "cuda",
            "gpu": "Fake V100",
            "compute_threads": 4,
            "copy_threads": 1,
            "link_gbps": dict(self.bandwidth),
            "nvml": gpu_report(self.ordinal),
        }


def ready_over_the_wire(device: int, ordinal: int, budget: int = 8 << 30, host_gbps: float = 12.0) -> Ready:
    cfg = WorkerConfig(device, "cuda", ordinal, None, "", None, (), 4, 2 << 20)
    frame = decode_payload(encode(ready_body(cfg, ReportingBackend(ordinal, budget, host_gbps)), 0)[HEADER.size :])
    assert frame.kind is Kind.READY and isinstance(frame.body, Ready)
    return frame.body


@pytest.fixture
def nvml(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml())


def test_nvml_report_through_ready_gives_switches_and_nvlinks(nvml: None) -> None:
    facts = [devicefacts.from_ready(ready_over_the_wire(i, i)) for i in range(4)]
    topo = devicefacts.topology(facts)
    assert topo.switches == (0, 0, 2, 2)
    assert topo.neighbours(0) == [1] and topo.neighbours(3) == [2]
    assert topo.links == {(0, 2): 2 * devicefacts.NVLINK_BYTES_PER_S, (1, 3): devicefacts.NVLINK_BYTES_PER_S}
    assert topo.direct(2, 0) and not topo.direct(0, 1)
    assert topo.capacities == (8 << 30,) * 4
    assert topo.host_bandwidth == 12.0 * GB
    assert facts[0].total_bytes == GPU_BYTES and facts[0].name == "Fake V100"


def test_serving_a_subset_of_gpus_maps_nvml_indices_to_server_devices(nvml: None) -> None:
    # Server devices 0 and 1 are GPUs 2 and 0: their NVLink pair is server devices (0, 1).
    facts = [devicefacts.from_ready(ready_over_the_wire(0, 2)), devicefacts.from_ready(ready_over_the_wire(1, 0))]
    topo = devicefacts.topology(facts)
    assert topo.links == {(0, 1): 2 * devicefacts.NVLINK_BYTES_PER_S}
    assert topo.switches == (0, 1)  # different switches


def test_measured_bandwidths_replace_the_nominal_ones(nvml: None) -> None:
    facts = [devicefacts.from_ready(ready_over_the_wire(i, i, host_gbps=g)) for i, g in enumerate((10, 11, 13, 9))]
    # PEERS replies: device 0 measured 44 GB/s from 2 (NVLink) and 9 GB/s from 1 (PCIe).
    facts[0] = devicefacts.with_peers(facts[0], {"host": 10.0, "peer:2": 44.0, "peer:1": 9.0})
    facts[1] = devicefacts.with_peers(facts[1], {"peer:0": 7.0})
    topo = devicefacts.topology(facts)
    assert topo.links[(0, 2)] == 44.0 * GB
    assert topo.links[(1, 3)] == devicefacts.NVLINK_BYTES_PER_S  # not measured: lanes × nominal
    assert topo.host_bandwidth == 10.5 * GB  # median of 9, 10, 11, 13
    assert topo.pcie_peer_bandwidth == 8.0 * GB  # median of the non-NVLink copies 9 and 7


def _ready(**change: Any) -> dict[str, Any]:
    body = {"device": 0, "kind": "cuda", "ordinal": 0, "pid": 1, "budget": 1 << 30, "backend": "cuda"}
    return {**body, "compute_threads": 1, "copy_threads": 1, "link_gbps": {"host": 12.0}, **change}


def _decoded(body: dict[str, Any]) -> Ready:
    header = msgspec.msgpack.encode((int(Kind.READY), 0, body, []))
    frame = decode_payload(HEADER.pack(len(header)) + header)
    assert isinstance(frame.body, Ready)
    return frame.body


def test_cpu_devices_are_flat_with_their_measured_copy_bandwidth() -> None:
    bodies = [
        _ready(device=i, kind="cpu", ordinal=i, link_gbps={"host": g, "peer": g}) for i, g in enumerate((4.0, 6.0))
    ]
    topo = devicefacts.topology([devicefacts.from_ready(_decoded(b)) for b in bodies])
    assert topo.switches == (0, 1) and topo.links == {}
    assert topo.host_bandwidth == 5.0 * GB and topo.pcie_peer_bandwidth == 5.0 * GB


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"budget": "1GiB"}, "$.budget"),
        ({"device": None}, "$.device"),
        ({"link_gbps": {"host": "fast"}}, "$.link_gbps"),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_a_ready_with_a_wrong_field_type_is_refused_by_the_codec(change: dict[str, Any], field: str) -> None:
    with pytest.raises(ProtocolError) as err:
        _decoded(_ready(**change))
    assert field in err.value.message


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"kind": "tpu"}, "'kind'"),
        ({"link_gbps": {"host": -1.0}}, "link_gbps['host']"),
        ({"link_gbps": {"sideways": 3.0}}, "'sideways'"),
        ({"nvml": {"links": {"x": {"pcie": "same_board", "nvlinks": 1}}}}, "key 'x'"),
        ({"nvml": {"links": {"1": {"pcie": "same_board", "nvlinks": "two"}}}}, "nvml.links[1]"),
        ({"nvml": {"total_bytes": 1}}, "'nvml'"),
    ],
)
def test_a_ready_with_wrong_facts_is_an_error_naming_the_field(change: dict[str, Any], field: str) -> None:
    with pytest.raises(ProtocolError) as err:
        devicefacts.from_ready(_decoded(_ready(**change)))
    assert field in err.value.message


def test_devices_must_all_report() -> None:
    one = devicefacts.from_ready(_decoded(_ready(device=1, kind="cpu", ordinal=1)))
    with pytest.raises(ProtocolError, match="expected devices 0..0"):
        devicefacts.topology([one])
