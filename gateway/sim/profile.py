"""Hardware profiles: a node's devices, links and per-model execution times, as a JSON file.

{
  "name": "...", "source": "where the figures come from",
  "devices": 4, "device_memory": "32GiB", "reserve": "2GiB",   # reserve: runtime, activations
  "switches": [0, 0, 1, 1],                                    # PCIe switch of each device
  "host_bandwidth_gbps": 12.0,                                 # GB/s host -> device per switch uplink
  "pcie_peer_bandwidth_gbps": 10.0,                            # GB/s device <-> device without NVLink
  "links": [{"devices": [0, 1], "gbps": 40.0}],                # direct links (NVLink)
  "pipeline_overlap": 0.8, "interference": 1.3, "exec_jitter": 0.05,
  "swap_latency_ms": 1.5,                                      # fixed cost per swap-in
  "interference_pairs": {"resnet152": {"bert-qa": 1.48}},      # per pair, overrides `interference`
  "native_function_overhead": "1.5GiB",   # a dedicated process' CUDA context and workspace
  "sources": {"host_bandwidth_gbps": "where the figure comes from", ...},
  "models": {"resnet50": {"bytes": 102000000, "exec_ms": 11.0,
                           "batch_exec_ms": 40.0, "max_batch": 8, "heavy": true,
                           "native_exec_ms": 11.0, "slo_ms": 80, "interference_as": "resnet152",
                           "corun_slowdown": 1.0, "request_ms": 0.5,
                           "source": "..."}}
}

Bandwidths are in 10^9 bytes per second. `interference` is the slowdown of a
heavy model's execution while a device on its PCIe switch swaps; `exec_jitter`
the spread (log-normal sigma) of execution times in simulation, for the models without
their own measured spread (`exec_quantiles`: run time / median at evenly spaced
probabilities, e.g. [0.92, 0.95, ..., 1.3, 1.6] from the fastest run to the slowest).

Per model, `corun_slowdown` is how much longer its execution takes while another device
executes at the same time: CPU devices share the host's caches and memory bandwidth
(`torpor profile` measures it; 1 when absent, as for GPUs); the engine slows a run by it
over the time the two overlap, whichever started first. `host_cores` (with
`device_threads` per CPU device) says they share the host's cores too: while the
executions, copies and the gateway's parsing want more cores than there are, each
progresses at cores / demand; `background_cores` of them are taken by other processes
(system services, a load generator; `torpor profile` measures it while idle), so the
devices and the gateway share what is left. `request_ms` is the server's
own time per request of the model (the JSON request of its input crossing the HTTP stack,
parsed, sent to the worker and answered; `torpor profile` times it through a real
`torpor serve`, less the queue and execution it reports, gateway/sim/requestcost.py): the
engine spends it on the gateway's one event loop, one request after another, before the
scheduler sees the request, each request taking it times a factor drawn from the model's
`request_quantiles` where the profile has them (its measured spread, as `exec_quantiles`).
`request_encoding` says which bodies it was timed with (`json`, the default, or `binary`:
Triton's binary tensor extension).
With `"shared_host": true` (CPU devices, which share one host's memory system) a model's
`copy_slowdown` applies to its execution while any other device copies a model in (over
the time they overlap).

A model's own `pipeline_overlap` (`torpor profile` measures it per model) replaces the
topology's for its swap-ins: how much of a copy hides behind execution depends on the
model's first operations.

`interference_pairs` (as in Torpor's Table 3) replaces that one factor with one per
pair: pairs[A][B] is how much longer a swap-in of a model that behaves like A takes
while a device on its PCIe switch swaps in one like B (`interference_as` names which
measured model a model behaves like; by default itself; a missing pair is 1). With
pairs, a warm execution is not slowed, and the neighbour's swap is accounted by the
factor rather than by splitting the switch's bandwidth.

Per model, `native_exec_ms` is the execution time of the native baseline (a dedicated
process, no remoting) when it differs, and `slo_ms` the model's SLO when a workload
does not set one. Any `source`/`sources` text says where a figure comes from.
"""

from __future__ import annotations

import itertools
import json
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.costmodel import GB, Topology
from shared.config import parse_size
from shared.specs import ENCODINGS

PROFILES = Path(__file__).parent / "profiles"


@dataclass(frozen=True)
class ModelProfile:
    name: str
    nbytes: int
    exec_ms: float
    batch_exec_ms: float | None = None
    max_batch: int = 1
    heavy: bool = True
    native_exec_ms: float | None = None  # the native baseline's execution time, if it differs
    slo_ms: float | None = None  # the model's SLO, when the workload sets none
    interference_as: str = ""  # the measured model it behaves like in interference_pairs ("" = itself)
    # Execution slowdown while another device executes at the same time: CPU devices share the
    # host's cores, caches and memory bandwidth (measured by `torpor profile`); GPUs do not (1.0).
    corun_slowdown: float = 1.0
    # Execution slowdown while another device of the same host copies a model in (CPU devices:
    # the copy and the execution share the memory bandwidth). Only applied with `shared_host`.
    copy_slowdown: float = 1.0
    # The server's own time per request, outside its queue and execution: the body the load
    # test sends crossing HTTP and parsed (a 224x224 image as JSON is 3 MB), the frame to the
    # worker, the response; added to every request's latency.
    request_ms: float = 0.0
    # How much longer that request takes while every device executes (measured by `torpor
    # profile` on CPU devices): its body crosses loopback TCP in many turns, each waiting for a
    # core, so it slows more than processor sharing says. Applied while the host's cores are
    # oversubscribed (at least cores / demand).
    request_slowdown: float = 1.0
    # The same beside 1, 2, ... devices executing (measured by `torpor profile` on CPU devices):
    # a request beside one execution slows too (its client and the gateway are two threads on
    # the host's cores), where processor sharing says it should not. When given, it replaces
    # request_slowdown: a request takes the slowdown beside as many devices as execute at its
    # start (the last for more), or processor sharing's if that is more.
    request_slowdowns: tuple[float, ...] = ()
    # How much of this model's swap-in hides behind its execution (0..1), where it differs from
    # the topology's: a model whose first operation needs a large tensor whole (bert's 89 MiB
    # word embeddings) hides less of its copy than one that starts with a small convolution.
    pipeline_overlap: float | None = None
    # A swap-in's fixed cost for this model, where it differs from the topology's swap_latency_ms:
    # `torpor profile` times cold requests through a real server (gateway/sim/requestcost.py),
    # and what a cold run costs beyond a warm one past its copy's unhidden share -- the swap-in's
    # set-up on the server -- is this.
    swap_latency_ms: float | None = None
    # The spread of its execution times (measured by `torpor profile` on CPU devices): each run's
    # time over the median, at evenly spaced probabilities from 0 to 1 (the fastest run, ...,
    # the slowest). A shared host's runs are skewed -- rarely 10% faster than the median, often
    # 20-50% slower, their mean 4-6% above it -- which one log-normal sigma cannot say. When given,
    # the engine draws each run's factor from these instead of the profile's exec_jitter.
    exec_quantiles: tuple[float, ...] = ()
    # The spread of its request's own time (request_ms) the same way, measured by `torpor profile`
    # over its requests with nothing else running: a request alone takes 0.7-1.6 x its median
    # (loopback turns, the parse's allocations), and where request_ms is half the execution, as
    # for a small image model, that tail is a good part of the function's p98. When given, the
    # engine draws each request's factor from these; without them every request takes request_ms.
    request_quantiles: tuple[float, ...] = ()

    def jitter(self, u: float) -> float:
        """The factor at probability `u` (0..1) of exec_quantiles, interpolated between its points."""
        return at_probability(self.exec_quantiles, u)

    def request_jitter(self, u: float) -> float:
        """The factor at probability `u` of request_quantiles (1 without them)."""
        return at_probability(self.request_quantiles, u) if self.request_quantiles else 1.0


SPREAD_POINTS = 21  # the fastest, every 5%, the slowest


def spread_quantiles(ratios: list[float]) -> tuple[float, ...]:
    """Time / median at probabilities 0, 0.05, ..., 1 (exec_quantiles, request_quantiles)."""
    if len(ratios) < 2:
        return ()
    inner = statistics.quantiles(ratios, n=SPREAD_POINTS - 1, method="inclusive")
    return tuple(round(f, 3) for f in (min(ratios), *inner, max(ratios)))


def at_probability(q: tuple[float, ...], u: float) -> float:
    """The factor at probability `u` (0..1) of quantiles `q` at evenly spaced probabilities, interpolated."""
    at = u * (len(q) - 1)
    i = min(int(at), len(q) - 2)
    return q[i] + (q[i + 1] - q[i]) * (at - i)


@dataclass(frozen=True)
class HardwareProfile:
    name: str
    topology: Topology
    models: dict[str, ModelProfile]
    exec_jitter: float = 0.0
    source: str = ""
    native_overhead: int = 0  # device memory a function's own runtime takes when it has a dedicated device
    interference_pairs: dict[str, dict[str, float]] = field(default_factory=dict)
    # The devices share one host's memory system (CPU devices): a copy onto any of them slows
    # an execution on any other by the model's copy_slowdown, whatever the PCIe switches say.
    shared_host: bool = False
    # The host's cores, when the devices are CPU devices computing on them (`device_threads`
    # each): the devices' executions and copies and the gateway's parsing share these cores,
    # each slowed to cores / demand while more want one than there are. None: GPUs.
    host_cores: int | None = None
    device_threads: int = 1
    # Of those cores, how many other processes keep busy on average (system services, a load
    # generator): the devices and the gateway share what is left. Measured (shared.hostload).
    background_cores: float = 0.0
    # How the request bodies whose cost `request_ms` is were encoded (shared.specs.ENCODINGS): a
    # 224x224 image is 3 MB of JSON text to parse or 600 KB of raw bytes, 10x apart in the gateway.
    request_encoding: str = "json"

    @property
    def devices(self) -> int:
        return self.topology.devices

    def slowdown(self, model: ModelProfile, neighbour: ModelProfile) -> float:
        """How much longer a swap-in of `model` takes while `neighbour` swaps in on its PCIe switch."""
        row = self.interference_pairs.get(model.interference_as or model.name, {})
        return row.get(neighbour.interference_as or neighbour.name, 1.0)


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
        swap_latency_ms=float(data.get("swap_latency_ms", 0.0)),
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
            _positive(m, "native_exec_ms", where, at),
            _positive(m, "slo_ms", where, at),
            str(m.get("interference_as", "")),
            corun_slowdown=_factor(m, "corun_slowdown", where, at),
            copy_slowdown=_factor(m, "copy_slowdown", where, at),
            request_slowdowns=_factors(m, "request_slowdowns", where, at),
            request_ms=_positive(m, "request_ms", where, at) or 0.0,
            request_slowdown=_factor(m, "request_slowdown", where, at),
            pipeline_overlap=_share(m, "pipeline_overlap", where, at),
            swap_latency_ms=_milliseconds(m, "swap_latency_ms", where, at),
            exec_quantiles=_quantiles(m, "exec_quantiles", where, at),
            request_quantiles=_quantiles(m, "request_quantiles", where, at),
        )
    if not models:
        raise ValueError(f"{where}: models is empty")
    pairs = data.get("interference_pairs", {})
    if not isinstance(pairs, dict) or not all(isinstance(r, dict) for r in pairs.values()):
        raise ValueError(f"{where}: interference_pairs must map a model to {{neighbour model: factor}}")
    for a, row in pairs.items():
        for b, f in row.items():
            if isinstance(f, bool) or not isinstance(f, (int, float)) or f < 1:
                raise ValueError(f"{where}: interference_pairs.{a}.{b}: expected a factor >= 1, got {f!r}")
    known = set(pairs) | {b for row in pairs.values() for b in row}
    for m in models.values():
        if m.interference_as and m.interference_as not in known:
            raise ValueError(
                f"{where}: models.{m.name}.interference_as: {m.interference_as!r} is not in interference_pairs"
            )
    host_cores = _count(data, "host_cores", where)
    return HardwareProfile(
        str(data.get("name", where)),
        topology,
        models,
        float(data.get("exec_jitter", 0.0)),
        str(data.get("source", "")),
        parse_size(data.get("native_function_overhead", "0"), f"{where}: native_function_overhead"),
        {a: {b: float(f) for b, f in row.items()} for a, row in pairs.items()},
        _flag(data, "shared_host", where),
        host_cores,
        _count(data, "device_threads", where) or 1,
        _background(data, host_cores, where),
        _encoding(data, where),
    )


def _encoding(data: dict[str, Any], where: str) -> str:
    v = data.get("request_encoding", "json")
    if v not in ENCODINGS:
        raise ValueError(f"{where}: request_encoding: expected one of {', '.join(ENCODINGS)}, got {v!r}")
    return str(v)


def _background(data: dict[str, Any], host_cores: int | None, where: str) -> float:
    """background_cores: a number of cores >= 0 and below host_cores (which it needs)."""
    v = data.get("background_cores", 0.0)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
        raise ValueError(f"{where}: background_cores: expected a number of cores >= 0, got {v!r}")
    if v and (host_cores is None or v >= host_cores):
        raise ValueError(f"{where}: background_cores: {v} needs host_cores above it (got {host_cores})")
    return float(v)


def _flag(data: dict[str, Any], key: str, where: str) -> bool:
    v = data.get(key, False)
    if not isinstance(v, bool):
        raise ValueError(f"{where}: {key}: expected true or false, got {v!r}")
    return v


def _count(data: dict[str, Any], key: str, where: str) -> int | None:
    """An optional whole number >= 1 (None when absent)."""
    v = data.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"{where}: {key}: expected a whole number >= 1, got {v!r}")
    return v


def _factor(m: dict[str, Any], key: str, where: str, at: str) -> float:
    """An optional slowdown factor (>= 1; 1 when absent)."""
    v = m.get(key, 1.0)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 1:
        raise ValueError(f"{where}: {at}{key}: expected a factor >= 1, got {v!r}")
    return float(v)


def _factors(m: dict[str, Any], key: str, where: str, at: str) -> tuple[float, ...]:
    """An optional list of slowdown factors (each >= 1; empty when absent)."""
    v = m.get(key, [])
    if not isinstance(v, list) or any(isinstance(f, bool) or not isinstance(f, (int, float)) or f < 1 for f in v):
        raise ValueError(f"{where}: {at}{key}: expected a list of factors >= 1, got {v!r}")
    return tuple(float(f) for f in v)


def _quantiles(m: dict[str, Any], key: str, where: str, at: str) -> tuple[float, ...]:
    """An optional list of at least 2 positive factors in non-decreasing order (empty when absent)."""
    v = m.get(key, [])
    ok = isinstance(v, list) and (not v or len(v) >= 2)
    ok = ok and all(not isinstance(f, bool) and isinstance(f, (int, float)) and f > 0 for f in v)
    if not ok or any(a > b for a, b in itertools.pairwise(v)):
        raise ValueError(
            f"{where}: {at}{key}: expected at least 2 factors > 0 in non-decreasing order "
            f"(time / median at evenly spaced probabilities), got {v!r}"
        )
    return tuple(float(f) for f in v)


def _share(m: dict[str, Any], key: str, where: str, at: str) -> float | None:
    """An optional fraction within [0, 1] (None when absent)."""
    return _number(m, key, where, at, lambda v: 0 <= v <= 1, "a fraction within [0, 1]")


def _positive(m: dict[str, Any], key: str, where: str, at: str) -> float | None:
    """An optional positive number of milliseconds."""
    return _number(m, key, where, at, lambda v: v > 0, "a number of milliseconds > 0")


def _milliseconds(m: dict[str, Any], key: str, where: str, at: str) -> float | None:
    """An optional number of milliseconds >= 0."""
    return _number(m, key, where, at, lambda v: v >= 0, "a number of milliseconds >= 0")


def _number(
    m: dict[str, Any], key: str, where: str, at: str, ok: Callable[[float], bool], expected: str
) -> float | None:
    """An optional number that `ok` accepts (None when absent); else an error naming the field."""
    if key not in m:
        return None
    v = m[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not ok(v):
        raise ValueError(f"{where}: {at}{key}: expected {expected}, got {v!r}")
    return float(v)


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
        "swap_latency_ms": round(t.swap_latency_ms, 3),
        "exec_jitter": profile.exec_jitter,
        **({"shared_host": True} if profile.shared_host else {}),
        **({"host_cores": profile.host_cores, "device_threads": profile.device_threads} if profile.host_cores else {}),
        **({"background_cores": round(profile.background_cores, 3)} if profile.background_cores else {}),
        **({"request_encoding": profile.request_encoding} if profile.request_encoding != "json" else {}),
        "native_function_overhead": str(profile.native_overhead),
        "models": {
            m.name: {
                "bytes": m.nbytes,
                "exec_ms": round(m.exec_ms, 3),
                **({"batch_exec_ms": round(m.batch_exec_ms, 3), "max_batch": m.max_batch} if m.batch_exec_ms else {}),
                "heavy": m.heavy,
                **({"corun_slowdown": round(m.corun_slowdown, 3)} if m.corun_slowdown != 1.0 else {}),
                **({"request_ms": round(m.request_ms, 3)} if m.request_ms else {}),
                **({"request_slowdown": round(m.request_slowdown, 3)} if m.request_slowdown != 1.0 else {}),
                **({"request_slowdowns": [round(f, 3) for f in m.request_slowdowns]} if m.request_slowdowns else {}),
                **({"copy_slowdown": round(m.copy_slowdown, 3)} if m.copy_slowdown != 1.0 else {}),
                **({"pipeline_overlap": round(m.pipeline_overlap, 3)} if m.pipeline_overlap is not None else {}),
                **({"swap_latency_ms": round(m.swap_latency_ms, 3)} if m.swap_latency_ms is not None else {}),
                **({"exec_quantiles": [round(f, 3) for f in m.exec_quantiles]} if m.exec_quantiles else {}),
                **({"request_quantiles": [round(f, 3) for f in m.request_quantiles]} if m.request_quantiles else {}),
            }
            for m in profile.models.values()
        },
    }
