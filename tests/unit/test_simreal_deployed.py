"""simreal tells the simulated scheduler what the server measured of each function at deploy."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from gateway.sim.engine import SimFunction, Simulation
from gateway.sim.profile import load
from loadtest.simreal import as_deployed, heavy_by_model


def _functions() -> list[SimFunction]:
    profile = load("cpu2-measured")
    heavy = replace(profile.models["resnet50"], heavy=True)
    return [SimFunction(f"f{i:03d}", heavy, 400.0) for i in range(3)]


def test_the_servers_heavy_flags_replace_the_profiles(tmp_path: Path) -> None:
    functions = _functions()
    assert as_deployed(functions, tmp_path / "absent.json") == functions, "a replay without the file: the profile's"
    path = tmp_path / "deployed.json"
    path.write_text(json.dumps({"heavy": {"f000": False, "f001": True, "f002": False}}))
    deployed = as_deployed(functions, path)
    assert [f.heavy for f in deployed] == [False, True, False]
    assert heavy_by_model(deployed) == {"resnet50": {"heavy": 1, "functions": 3, "profile": True}}
    assert heavy_by_model(functions) == {"resnet50": {"heavy": 3, "functions": 3, "profile": True}}


def test_a_function_the_file_lacks_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "deployed.json"
    path.write_text(json.dumps({"heavy": {"f000": False}}))
    with pytest.raises(SystemExit, match=r"deployed.json: no heavy flag for \['f001', 'f002'\]"):
        as_deployed(_functions(), path)


def test_the_simulated_scheduler_is_told_the_functions_flag_and_the_model_keeps_its_own() -> None:
    profile = load("cpu2-measured")
    functions = _functions()
    functions[1] = replace(functions[1], heavy=False)
    sim = Simulation(profile, "torpor", functions, seed=0)
    told = [sim.scheduler.functions[f.name].info.heavy for f in functions]
    assert told == [True, False, True], "None: the model's flag; a flag of its own otherwise"
    assert all(f.model.heavy for f in functions), "the hardware's slowdown beside a swap is still the model's"
