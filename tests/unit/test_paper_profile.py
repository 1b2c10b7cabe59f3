"""The paper's node (gateway/sim/profiles/paper-v100x4.json) against the paper's own tables,
per-model SLOs and workload files, and the no-collapse property of the policy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.sim.engine import SimFunction, Simulation
from gateway.sim.profile import PROFILES, load, parse
from gateway.sim.run import Workload, functions_for, load_workload, summary
from gateway.sim.summary import summarize

PAPER = json.loads((PROFILES / "paper-v100x4.json").read_text())


def cold_latency_ms(model: str, peer: bool, neighbour: str | None = None) -> float:
    """One request of `model` swapped in alone (from the host, or over NVLink from device 1),
    optionally while its PCIe-switch neighbour swaps `neighbour` in from the host."""
    # Two of the node's GPUs, one PCIe switch and one NVLink: the only place left is beside
    # the neighbour. No jitter: the table reports means.
    profile = parse({**PAPER, "devices": 2, "switches": [0, 0], "links": PAPER["links"][:1], "exec_jitter": 0})
    names = [model] + ([neighbour] if neighbour else [])
    fns = [SimFunction(f"f{i}", profile.models[m], 10_000) for i, m in enumerate(names)]
    sim = Simulation(profile, "torpor", fns, preload=False)  # the model starts in host memory only
    arrivals: list[tuple[float, int]] = []
    if peer:  # make device 1 hold it (one run), then keep device 1 busy so the copy goes to 0
        arrivals = [(0.0, 0), (1.0, 0), (1.0, 0)]
    elif neighbour:
        arrivals = [(0.0, 1), (0.0, 0)]  # the neighbour starts swapping first, on device 0
    else:
        arrivals = [(0.0, 0)]
    sim.run(arrivals)
    return sim.tallies[0].latencies_ms[-1]


@pytest.mark.parametrize("model", sorted(PAPER["table4"]["swap_pcie_ms"]))
def test_swap_latencies_reproduce_table4_within_10_percent(model: str) -> None:
    pcie = PAPER["table4"]["swap_pcie_ms"][model]
    nvlink = PAPER["table4"]["swap_nvlink_ms"][model]
    assert cold_latency_ms(model, peer=False) == pytest.approx(pcie, rel=0.10)
    assert cold_latency_ms(model, peer=True) == pytest.approx(nvlink, rel=0.10)


@pytest.mark.parametrize(
    ("model", "neighbour", "slowdown"),
    [
        ("resnet152", "densenet169", 1.07),
        ("resnet152", "bert-qa", 1.48),
        ("bert-qa", "densenet169", 1.11),
        ("bert-qa", "resnet152", 1.61),
        ("densenet169", "bert-qa", 1.0),
        ("densenet169", "resnet152", 1.0),
    ],
)
def test_a_neighbours_swap_slows_a_swap_in_as_table3_says(model: str, neighbour: str, slowdown: float) -> None:
    alone = cold_latency_ms(model, peer=False)
    assert cold_latency_ms(model, peer=False, neighbour=neighbour) == pytest.approx(alone * slowdown, rel=1e-6)


def test_every_paper_figure_names_its_source() -> None:
    for field in ("devices", "device_memory", "switches", "links", "host_bandwidth_gbps", "interference"):
        assert PAPER["sources"][field]
    for name, m in PAPER["models"].items():
        assert "Table 4" in m["source"], name
    assert len(PAPER["models"]) == 8 and PAPER["models"]["bert-qa"]["bytes"] > 1.3e9


def test_per_model_slos_from_the_profile_the_workload_or_one_for_all(tmp_path: Path) -> None:
    profile = load("paper-v100x4")
    slos = {f.model.name: f.slo_ms for f in functions_for(profile, Workload(8))}
    assert slos["bert-qa"] == 200 and slos["resnet50"] == 80 and len(slos) == 8
    w = tmp_path / "w.json"
    w.write_text(json.dumps({"functions": 8, "slos": {"bert-qa": 300}, "shape": "uniform"}))
    slos = {f.model.name: f.slo_ms for f in functions_for(profile, load_workload(w))}
    assert slos["bert-qa"] == 300 and slos["resnet152"] == 80
    assert {f.slo_ms for f in functions_for(profile, Workload(8, slo_ms=50))} == {50}
    assert functions_for(profile, Workload(8, slo_factor=2))[0].slo_ms == 2 * profile.models["bert-qa"].exec_ms


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"slos": {"nope": 10}}, r"slos: \['nope'\] not in profile"),
        ({"slos": {"bert-qa": "fast"}}, "slos must map a model"),
        ({"shape": "square"}, "shape: expected one of lognormal, uniform"),
        ({"rpm_low": 30, "rpm_high": 5}, "rpm_low <= rpm_high"),
        ({"percentile": 98}, r"percentile: expected within \(0, 1\)"),
        ({"functoins": 3}, r"unknown field\(s\) \['functoins'\]"),
        ([1, 2], "expected a JSON object"),
    ],
)
def test_bad_workload_files_say_which_field(tmp_path: Path, content: object, message: str) -> None:
    w = tmp_path / "w.json"
    w.write_text(json.dumps(content))
    with pytest.raises(ValueError, match=message):
        functions_for(load("paper-v100x4"), load_workload(w))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"slo_ms": 0}, r"models.resnet50.slo_ms: expected a number of milliseconds > 0"),
        ({"native_exec_ms": "fast"}, r"models.resnet50.native_exec_ms: expected a number"),
        ({"interference_as": "vgg"}, r"models.resnet50.interference_as: 'vgg' is not in interference_pairs"),
    ],
)
def test_bad_model_entries_say_which_field(change: dict[str, object], message: str) -> None:
    models = {**PAPER["models"], "resnet50": {**PAPER["models"]["resnet50"], **change}}
    with pytest.raises(ValueError, match=message):
        parse({**PAPER, "models": models})


def test_bad_interference_pairs_are_refused() -> None:
    with pytest.raises(ValueError, match=r"interference_pairs.resnet152.bert-qa: expected a factor >= 1"):
        parse({**PAPER, "interference_pairs": {"resnet152": {"bert-qa": 0.5}}})


def test_a_late_request_says_why() -> None:
    profile = load("paper-v100x4")
    f = SimFunction("f", profile.models["bert-qa"], slo_ms=100)  # a cold bert-qa takes ~140 ms
    sim = Simulation(profile, "torpor", [f], preload=False).run([(0.0, 0)])  # starts in host memory
    assert sim.tallies[0].late == {"swap": 1}
    s = summarize(sim)
    assert s["late_by_model"] == {"bert-qa": {"swap": 1}} and s["missing_by_model"] == {"bert-qa": 1}


SMALL = {
    "name": "two small devices",
    "devices": 2,
    "device_memory": "600MB",
    "switches": [0, 0],
    "host_bandwidth_gbps": 10.0,
    "links": [{"devices": [0, 1], "gbps": 50.0}],
    "pipeline_overlap": 0.85,
    "swap_latency_ms": 1.5,
    "interference_pairs": {"big": {"big": 1.5, "small": 1.1}},
    "exec_jitter": 0.05,
    "models": {
        "small": {"bytes": 50_000_000, "exec_ms": 10, "slo_ms": 60, "heavy": False},
        "big": {"bytes": 300_000_000, "exec_ms": 25, "slo_ms": 150},
    },
}


def test_no_collapse_past_the_knee(tmp_path: Path) -> None:
    """At 1.5x the load where every function still meets its SLO, at least as many meet it."""
    path = tmp_path / "small.json"
    path.write_text(json.dumps(SMALL))
    profile = load(path)

    def meeting(n: int, drop_late: bool) -> int:
        w = Workload(n, minutes=3, shape="uniform", rpm_low=20, rpm_high=40, drop_late=drop_late)
        return summary(profile, w, "torpor")["functions_meeting_slo"]

    for drop_late in (False, True):
        knee = max(n for n in range(10, 70, 10) if meeting(n, drop_late) == n)
        assert meeting(int(knee * 1.5), drop_late) >= knee, f"drop_late={drop_late}, knee {knee}"


@pytest.mark.parametrize("functions", [160, 480])
def test_native_fits_72_functions_as_in_the_paper(functions: int) -> None:
    profile = load("paper-v100x4")
    fns = functions_for(profile, load_workload(PROFILES.parent / "workloads" / "paper.json", functions=functions))
    sim = Simulation(profile, "native", fns)
    assert sum(s.home is not None for s in sim.scheduler.functions.values()) == 72
