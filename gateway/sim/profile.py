"""Hardware profiles: a node's devices, links and per-model execution times, as a JSON file.

{
  "name": "...", "source": "where the figures come from",
  "devices": 4, "device_memory": "32GiB", "reserve": "2GiB",   # reserve: runtime, activations
  "switches": [0, 0, 1, 1],                                    # PCIe switch of each device
  "host_bandwidth_gbps": 12.0,                                 # GB/s host -> device per switch uplink
  "pcie_peer_bandwidth_gbps": 10.0,                            # GB/s device <-> device without NVLink
  "links": [{"devices": [0, 1], "gbps": 40.0}],                # direct links (NVLink)
  "pipeline_overlap": 0.8, "interference": 1.3, "exec_jitter": 0.05,
  "native_function_overhead": "1.5GiB",   # a dedicated process' CUDA context and workspace
  "models": {"resnet50": {"bytes": 102000000, "exec_ms": 11.0,
                           "batch_exec_ms": 40.0, "max_batch": 8, "heavy": true}}
}

Bandwidths are in 10^9 bytes per second. `interference` is the slowdown of a
heavy model's execution while a device on its PCIe switch swaps; `exec_jitter`
the spread (log-normal sigma) of execution times in simulation.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.costmodel import GB, Topology
from shared.config import parse_size

PROFILES = Path(__file__).parent / "profiles"


@dataclass(frozen=True)
class ModelProfile:
    name: str
    nbytes: int
    exec_ms: float
    batch_exec_ms: float | None = None
    max_batch: int = 1
    heavy: bool = True


@dataclass(frozen=True)
class HardwareProfile:
    name: str
    topology: Topology
    models: dict[str, ModelProfile]
    exec_jitter: float = 0.0
    source: str = ""
    native_overhead: int = 0  # device memory a function's own runtime takes when it has a dedicated device

    @property
    def devices(self) -> int:
        return self.topology.devices


def builtin() -> list[str]:
    return sorted(p.stem for p in PROFILES.glob("*.json"))


def load(name_or_path: str | Path) -> HardwareProfile:
    """A profile by file path, or by the name of one shipped in gateway/sim/profiles/."""
    path = Path(name_or_path)
    if not path.exists():
        path = PROFILES / f"{name_or_path}.json"
    if not path.exists():
        raise ValueError(f"profile: no file {name_or_path!r} and no built-in profile of that name ({builtin()})")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"profile {path}: not JSON ({exc})") from exc
    return parse(data, str(path))


def parse(data: Any, where: str = "profile") -> HardwareProfile:
    def need(key: str, kind: type | tuple[type, ...], obj: Any = data, at: str = "") -> Any:
        if not isinstance(obj, dict) or key not in obj:
            raise ValueError(f"{where}: missing {at}{key}")
        value = obj[key]
        if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
            raise ValueError(f"{where}: {at}{key} has the wrong type ({type(value).__name__})")
        return value

    n = need("devices", int)
    memory = parse_size(need("device_memory", str), f"{where}: device_memory")
    reserve = parse_size(data.get("reserve", "0"), f"{where}: reserve")
    switches = data.get("switches", list(range(n)))
    if not isinstance(switches, list) or len(switches) != n:
        raise ValueError(f"{where}: switches must list one PCIe switch per device ({n})")
    links: dict[tuple[int, int], float] = {}
    for i, link in enumerate(data.get("links", [])):
        a, b = need("devices", list, link, f"links[{i}].")
        links[(int(a), int(b))] = float(need("gbps", (int, float), link, f"links[{i}].")) * GB
    topology = Topology(
        capacities=(memory - reserve,) * n,
        switches=tuple(int(s) for s in switches),
        host_bandwidth=float(need("host_bandwidth_gbps", (int, float))) * GB,
        pcie_peer_bandwidth=float(data.get("pcie_peer_bandwidth_gbps", data["host_bandwidth_gbps"])) * GB,
        links=links,
        pipeline_overlap=float(data.get("pipeline_overlap", 0.8)),
        interference=float(data.get("interference", 1.0)),
    )
    models = {}
    for name, m in need("models", dict).items():
        at = f"models.{name}."
        models[name] = ModelProfile(
            name,
            int(need("bytes", int, m, at)),
            float(need("exec_ms", (int, float), m, at)),
            float(m["batch_exec_ms"]) if "batch_exec_ms" in m else None,
            int(m.get("max_batch", 1)),
            bool(m.get("heavy", True)),
        )
    if not models:
        raise ValueError(f"{where}: models is empty")
    return HardwareProfile(
        str(data.get("name", where)),
        topology,
        models,
        float(data.get("exec_jitter", 0.0)),
        str(data.get("source", "")),
        parse_size(data.get("native_function_overhead", "0"), f"{where}: native_function_overhead"),
    )


def dump(profile: HardwareProfile, device_memory: int, reserve: int = 0) -> dict[str, Any]:
    """The JSON form of a profile (what `torpor profile` writes)."""
    t = profile.topology
    return {
        "name": profile.name,
        "source": profile.source,
        "devices": t.devices,
        "device_memory": str(device_memory),
        "reserve": str(reserve),
        "switches": list(t.switches),
        "host_bandwidth_gbps": round(t.host_bandwidth / GB, 3),
        "pcie_peer_bandwidth_gbps": round(t.pcie_peer_bandwidth / GB, 3),
        "links": [{"devices": list(k), "gbps": round(v / GB, 3)} for k, v in t.links.items()],
        "pipeline_overlap": round(t.pipeline_overlap, 3),
        "interference": round(t.interference, 3),
        "exec_jitter": profile.exec_jitter,
        "native_function_overhead": str(profile.native_overhead),
        "models": {
            m.name: {
                "bytes": m.nbytes,
                "exec_ms": round(m.exec_ms, 3),
                **({"batch_exec_ms": round(m.batch_exec_ms, 3), "max_batch": m.max_batch} if m.batch_exec_ms else {}),
                "heavy": m.heavy,
            }
            for m in profile.models.values()
        },
    }
