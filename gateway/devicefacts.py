"""Device facts as the workers report them, and the scheduler's topology made from them.

Workers are the only source of device facts: a worker measures its device at start and
says what it found in READY (kind, arena budget, memory, measured host-to-device
bandwidth, and on GPUs the NVML report of how it is linked to every other GPU); the
reply to PEERS adds the measured peer-copy bandwidths. This module checks those
messages once and turns them into the `Topology` the scheduler and cost model use.

NVML reports name the other GPUs by NVML index; msgpack maps carry them as strings.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field, replace
from typing import Any

from gateway.costmodel import GB, Topology
from shared.errors import ProtocolError
from shared.protocol import Ready

NVLINK_BYTES_PER_S = 25 * GB  # one NVLink 2 link, one direction (V100): used until a copy is measured
# NVML common-ancestor levels at which two GPUs share a PCIe switch (and so its uplink).
SHARED_SWITCH = ("same_board", "same_pcie_switch")


@dataclass(frozen=True)
class Link:
    pcie: str  # NVML common ancestor level, e.g. "same_pcie_switch", "host_bridge"
    nvlinks: int  # direct NVLink lanes between the two GPUs


@dataclass(frozen=True)
class DeviceFacts:
    device: int  # index among the server's devices
    kind: str  # "cpu" or "cuda"
    budget: int  # arena bytes
    ordinal: int  # the NVML index of a GPU (the position of a CPU device)
    host_gbps: float | None  # measured host -> device copy
    peer_gbps: dict[int, float] = field(default_factory=dict)  # measured copies from another device
    links: dict[int, Link] = field(default_factory=dict)  # by the other GPU's NVML index
    total_bytes: int | None = None
    name: str | None = None  # e.g. the GPU's model


def from_ready(ready: Ready) -> DeviceFacts:
    """Check a READY body once (its field types are checked by the frame codec); errors name the field."""
    where = "READY"
    if ready.kind not in ("cpu", "cuda"):
        raise ProtocolError(f"{where}: field 'kind' expected 'cpu' or 'cuda', got {ready.kind!r:.40}")
    host, peers = _bandwidths(ready.link_gbps, where)
    links: dict[int, Link] = {}
    total = ready.total_bytes
    nvml = ready.nvml
    if nvml is not None:
        if not isinstance(nvml.get("links"), dict):
            raise ProtocolError(f"{where}: field 'nvml' expected a map with 'links', got {nvml!r:.80}")
        for other, link in nvml["links"].items():
            try:
                index = int(other)  # keys are strings on the wire
            except (TypeError, ValueError):
                raise ProtocolError(f"{where}: nvml.links key {other!r} is not a GPU index") from None
            if not (
                isinstance(link, dict) and isinstance(link.get("pcie"), str) and isinstance(link.get("nvlinks"), int)
            ):
                raise ProtocolError(f"{where}: nvml.links[{other}] expected {{pcie, nvlinks}}, got {link!r:.80}")
            links[index] = Link(link["pcie"], link["nvlinks"])
        if isinstance(nvml.get("total_bytes"), int):
            total = nvml["total_bytes"]
    return DeviceFacts(ready.device, ready.kind, ready.budget, ready.ordinal, host, peers, links, total, ready.gpu)


def with_peers(facts: DeviceFacts, link_gbps: dict[str, float]) -> DeviceFacts:
    """Add the peer bandwidths a worker measured when it opened the others' arenas (PEERS reply)."""
    _, peers = _bandwidths(link_gbps, "PEERS reply")
    return replace(facts, peer_gbps={**facts.peer_gbps, **peers})


def _bandwidths(gbps: dict[str, float], where: str) -> tuple[float | None, dict[int, float]]:
    """`{"host": GB/s, "peer:<device>": GB/s, "peer": GB/s}`: "peer" alone is any other device."""
    host: float | None = None
    peers: dict[int, float] = {}
    for key, value in gbps.items():
        if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
            raise ProtocolError(f"{where}: link_gbps[{key!r}] expected a positive number, got {value!r:.40}")
        if key == "host":
            host = float(value)
        elif key == "peer":
            peers[-1] = float(value)
        elif isinstance(key, str) and key.startswith("peer:") and key[5:].isdigit():
            peers[int(key[5:])] = float(value)
        else:
            raise ProtocolError(f"{where}: link_gbps key {key!r}; expected 'host', 'peer' or 'peer:<device>'")
    return host, peers


def topology(facts: list[DeviceFacts], **kw: Any) -> Topology:
    """The scheduler's topology from every device's facts, in device order.

    CPU devices share nothing. GPUs behind one PCIe switch (NVML: same board or same
    switch) share its uplink; an NVLink pair gets a direct link at the bandwidth a
    worker measured copying between them (or lanes × the nominal rate until measured).
    Host and PCIe peer bandwidths are the medians of what the workers measured.
    """
    facts = sorted(facts, key=lambda f: f.device)
    if [f.device for f in facts] != list(range(len(facts))):
        raise ProtocolError(f"device facts: expected devices 0..{len(facts) - 1}, got {[f.device for f in facts]}")
    capacities = [f.budget for f in facts]
    switches = list(range(len(facts)))
    links: dict[tuple[int, int], float] = {}
    by_ordinal = {f.ordinal: f.device for f in facts if f.kind == "cuda"}
    pcie_peer: list[float] = []
    for f in facts:
        for other_ordinal, link in f.links.items():
            j = by_ordinal.get(other_ordinal)
            if j is None or j == f.device:
                continue  # a GPU this server does not use
            i = f.device
            if link.pcie in SHARED_SWITCH:
                switches[i] = switches[j] = min(switches[i], switches[j])
            if link.nvlinks:
                measured = [g for g in (f.peer_gbps.get(j), facts[j].peer_gbps.get(i)) if g]
                bandwidth = max(measured) * GB if measured else link.nvlinks * NVLINK_BYTES_PER_S
                key = (min(i, j), max(i, j))
                links[key] = max(links.get(key, 0.0), bandwidth)
    _close_switch_groups(switches)
    for f in facts:
        for j, g in f.peer_gbps.items():
            if j == -1 or (min(f.device, j), max(f.device, j)) not in links:
                pcie_peer.append(g * GB)
    hosts = [f.host_gbps * GB for f in facts if f.host_gbps]
    measured: dict[str, float] = {}
    if hosts:
        measured["host_bandwidth"] = statistics.median(hosts)
    if pcie_peer:
        measured["pcie_peer_bandwidth"] = statistics.median(pcie_peer)
    return Topology(tuple(capacities), tuple(switches), links=links, **{**measured, **kw})


def _close_switch_groups(switches: list[int]) -> None:
    """Pairwise merges may leave chains (0~1, 1~2 seen in that order): give each group its least id."""
    changed = True
    while changed:
        changed = False
        for i, s in enumerate(switches):
            if switches[s] != s and switches[s] < s:
                switches[i] = switches[s]
                changed = True
