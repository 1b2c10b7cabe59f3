"""How long a request will take where: the scheduler's cost model (pure, no I/O).

predicted completion = wait + service, service = transfer ⊕ exec, where

- transfer = model bytes ÷ link bandwidth, and a link through a PCIe switch is
  shared equally by the transfers running through it at that moment;
- exec is profiled per model per device kind at deploy (a few warm runs at batch 1
  and at the largest batch), interpolated linearly in the batch size, and corrected
  online from the execution times the workers report;
- ⊕ is the pipelined sum: execution starts when the first layers have arrived,
  so with overlap 1 it costs max(transfer, exec) and with overlap 0 the plain sum;
  a swap-in also pays a fixed `swap_latency_ms` (setup, first group, synchronisation).

The topology says which devices share a PCIe switch and which pairs have a
direct link (NVLink); the simulator's hardware profiles and the live gateway
(from NVML, or a flat CPU topology) both describe it the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field

GB = 1e9


@dataclass(frozen=True)
class Topology:
    capacities: tuple[int, ...]  # bytes each device may hold in models
    switches: tuple[int, ...]  # PCIe switch of each device; devices on one switch share its uplink
    host_bandwidth: float = 12 * GB  # bytes/s from host memory over one switch's uplink
    pcie_peer_bandwidth: float = 12 * GB  # bytes/s between devices without a direct link
    links: dict[tuple[int, int], float] = field(default_factory=dict)  # direct links (NVLink), bytes/s
    pipeline_overlap: float = 0.8  # 0..1, how much of a swap-in hides behind execution
    interference: float = 1.0  # exec slowdown of a heavy model while a neighbour on its switch swaps
    swap_latency_ms: float = 0.0  # fixed cost of a swap-in besides its bytes: setup, first group, sync

    @classmethod
    def flat(cls, capacities: list[int], **kw: float) -> Topology:
        """Every device on its own switch, no direct links (CPU devices, or an unknown machine)."""
        return cls(tuple(capacities), tuple(range(len(capacities))), **kw)  # type: ignore[arg-type]

    def __post_init__(self) -> None:
        if len(self.capacities) != len(self.switches):
            raise ValueError("topology: one PCIe switch per device expected")
        if not 0 <= self.pipeline_overlap <= 1:
            raise ValueError("topology: pipeline_overlap must be within [0, 1]")

    @property
    def devices(self) -> int:
        return len(self.capacities)

    def neighbours(self, device: int) -> list[int]:
        """Other devices behind the same PCIe switch."""
        s = self.switches[device]
        return [d for d, sw in enumerate(self.switches) if sw == s and d != device]

    def peer_bandwidth(self, a: int, b: int) -> float:
        return self.links.get((a, b)) or self.links.get((b, a)) or self.pcie_peer_bandwidth

    def direct(self, a: int, b: int) -> bool:
        return (a, b) in self.links or (b, a) in self.links


@dataclass
class ExecProfile:
    """Execution time of one model on one device kind, in milliseconds."""

    batch1_ms: float
    batch_max_ms: float | None = None  # at max_batch; None: batch b costs b × batch1
    max_batch: int = 1

    def at(self, batch: int) -> float:
        if batch <= 1:
            return self.batch1_ms
        if self.batch_max_ms is None or self.max_batch <= 1:
            return self.batch1_ms * batch
        slope = (self.batch_max_ms - self.batch1_ms) / (self.max_batch - 1)
        return self.batch1_ms + slope * (batch - 1)

    def observe(self, batch: int, measured_ms: float, weight: float = 0.2) -> None:
        """Fold a measured execution time in (exponential average of the prediction error)."""
        predicted = self.at(batch)
        if predicted <= 0 or measured_ms <= 0:
            return
        factor = 1 + weight * (measured_ms / predicted - 1)
        self.batch1_ms *= factor
        if self.batch_max_ms is not None:
            self.batch_max_ms *= factor


def pipelined(transfer_ms: float, exec_ms: float, overlap: float) -> float:
    """Service time of a swap-in and an execution that overlap by `overlap` (0..1)."""
    return max(transfer_ms, exec_ms) + (1 - overlap) * min(transfer_ms, exec_ms)


class CostModel:
    def __init__(self, topology: Topology) -> None:
        self.topology = topology
        # Sequential read bandwidth of the state dir's image files (disk tier); the service
        # replaces this assumption with what it measures reading images at start.
        self.disk_bandwidth = 1e9

    def transfer_ms(self, nbytes: int, target: int, source: int | None, active: dict[int, int]) -> float:
        """Copy time onto `target` from the host (source None) or a peer device.

        `active` counts transfers running now per PCIe switch; a new transfer through
        a switch shares it with those. A direct link (NVLink) shares nothing.
        """
        topo = self.topology
        if source is not None and topo.direct(source, target):
            return nbytes / topo.peer_bandwidth(source, target) * 1e3
        if source is None:
            share = 1 + active.get(topo.switches[target], 0)
            return nbytes / (topo.host_bandwidth / share) * 1e3
        switches = {topo.switches[target], topo.switches[source]}
        share = 1 + max(active.get(s, 0) for s in switches)
        return nbytes / (topo.pcie_peer_bandwidth / share) * 1e3

    def disk_ms(self, nbytes: int) -> float:
        """Reading an image from disk into host memory (pipelined with its copy to the device)."""
        return nbytes / self.disk_bandwidth * 1e3

    def swap_latency_ms(self, own: float | None = None) -> float:
        """A swap-in's fixed cost: the model's `own` where it has one, else the topology's."""
        return self.topology.swap_latency_ms if own is None else own

    def service_ms(
        self, transfer_ms: float, exec_ms: float, overlap: float | None = None, latency_ms: float | None = None
    ) -> float:
        """A run's time: its swap-in (if any) pipelined with its execution, at `overlap` or the topology's,
        plus the swap-in's fixed `latency_ms` or the topology's."""
        extra = self.swap_latency_ms(latency_ms) if transfer_ms > 0 else 0.0
        share = self.topology.pipeline_overlap if overlap is None else overlap
        return pipelined(transfer_ms, exec_ms, share) + extra
