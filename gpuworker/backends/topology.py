"""What NVML says about the GPUs: memory, utilization, and how each pair is linked.

The scheduler prefers a swap target whose PCIe-switch neighbour is not swapping
and copies between GPUs over the fastest link, so it needs this map.
"""

from __future__ import annotations

from typing import Any

# nvmlDeviceGetTopologyCommonAncestor levels, nearest first.
_LEVELS = {
    0: "same_board",
    10: "same_pcie_switch",
    20: "pcie_switches",
    30: "host_bridge",
    40: "numa_node",
    50: "system",
}
_MAX_NVLINKS = 18


def gpu_report(ordinal: int) -> dict[str, Any]:
    """Memory, utilization and links of GPU `ordinal` to every other visible GPU."""
    import pynvml

    pynvml.nvmlInit()
    try:
        handle = pynvml.nvmlDeviceGetHandleByIndex(ordinal)
        mem = pynvml.nvmlDeviceGetMemoryInfo(handle)
        util = pynvml.nvmlDeviceGetUtilizationRates(handle)
        links: dict[int, dict[str, Any]] = {}
        bus_of = {}
        for other in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(other)
            bus_of[_bus(pynvml.nvmlDeviceGetPciInfo(h))] = other
            if other != ordinal:
                level = pynvml.nvmlDeviceGetTopologyCommonAncestor(handle, h)
                links[other] = {"pcie": _LEVELS.get(int(level), str(level)), "nvlinks": 0}
        for link in range(_MAX_NVLINKS):
            try:
                if pynvml.nvmlDeviceGetNvLinkState(handle, link) != pynvml.NVML_FEATURE_ENABLED:
                    continue
                peer = bus_of.get(_bus(pynvml.nvmlDeviceGetNvLinkRemotePciInfo(handle, link)))
            except pynvml.NVMLError:
                break  # no more links (or no NVLink at all)
            if peer is not None and peer in links:
                links[peer]["nvlinks"] += 1
        return {
            "total_bytes": int(mem.total),
            "used_bytes": int(mem.used),
            "utilization_pct": int(util.gpu),
            "links": {str(k): v for k, v in links.items()},
        }
    finally:
        pynvml.nvmlShutdown()


def _bus(pci: Any) -> str:
    bus = pci.busId
    return (bus.decode() if isinstance(bus, bytes) else str(bus)).lower()
