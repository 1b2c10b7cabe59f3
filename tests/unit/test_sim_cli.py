"""`torpor simulate` options: the trace's function count as the default, one-line refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.cli import main

TRACE = str(Path(__file__).parents[2] / "loadtest" / "traces" / "sample-azure.csv")  # 20 functions, 30 minutes


def test_trace_without_functions_simulates_all_of_its_functions(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["simulate", "--trace", TRACE, "--minutes", "2", "--out", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "summary-torpor.json").read_text())
    assert summary["functions"] == 20, summary.keys()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--trace", TRACE, "--functions", "50"], "--functions asks for 50 functions; the trace"),
        (["--trace", TRACE, "--sweep", "5:40:5"], "--sweep asks for 40 functions; the trace"),
        (["--trace", TRACE, "--minutes", "31"], "--minutes 31: the trace"),
        (["--trace", TRACE, "--rate", "1"], "--rate: only for a generated trace"),
        (["--trace", TRACE, "--sigma", "1", "--burstiness", "0"], "--sigma, --burstiness: only for a generated trace"),
        (["--trace", "/no/such/trace.csv"], "--trace /no/such/trace.csv: No such file or directory"),
        (["--slo-ms", "10", "--slo-factor", "2"], "give --slo-ms (one SLO for every function) or --slo-factor"),
        (["--sweep", "10:20:5", "--functions", "3"], "--sweep FROM:TO:STEP sets the function counts"),
        (["--sweep", "20:10:5"], "--sweep 20:10:5: expected 1 <= FROM <= TO and STEP >= 1"),
        (["--sweep", "a:b"], "--sweep: expected FROM:TO:STEP"),
        (["--functions", "0"], "--functions 0: expected at least 1"),
        (["--minutes", "0"], "--minutes 0: expected at least 1"),
        (["--percentile", "100"], "--percentile 100.0: expected between 0 and 100"),
        (["--burstiness", "1.5"], "--burstiness 1.5: expected from 0 to 1"),
        (["--max-batch", "0"], "--max-batch 0: expected from 1 to 256"),
        (["--nodes", "4", "--functions", "3"], "--nodes 4: more nodes than functions (3)"),
        (["--slo-ms", "-1"], "--slo-ms -1.0: expected above 0 ms"),
        (["--admit-utilization", "most"], "--admit-utilization: expected a share of device time such as 0.85, or off"),
    ],
)
def test_bad_combinations_are_one_line_errors(options: list[str], message: str, tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["simulate", *options, "--out", str(tmp_path)])
    text = str(exc.value.code)
    assert text.startswith("torpor simulate: ") and message in text and "\n" not in text, text
    assert not any(tmp_path.iterdir()), "nothing is written for a refused run"


def test_admission_bound_is_set_or_turned_off_from_the_command_line(tmp_path: Path) -> None:
    from gateway.decisions import POLICIES
    from gateway.sim.run import Workload, policy_for

    assert policy_for("torpor", Workload(10)) == "torpor"
    assert policy_for("torpor", Workload(10, admit_utilization=0.7)).admit_utilization == 0.7  # type: ignore[union-attr]
    assert policy_for("torpor", Workload(10, admit_utilization=0.0)).admit_utilization is None  # type: ignore[union-attr]
    assert policy_for("simpleswap", Workload(10, admit_utilization=0.7)) == "simpleswap"  # it has none
    assert POLICIES["torpor"].admit_utilization == 0.85
    with pytest.raises(ValueError, match="admit_utilization"):
        Workload(10, admit_utilization=-1)
