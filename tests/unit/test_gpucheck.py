"""`make gpu-check` on this host, and its report rendered from a GPU host's measurements."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gpuworker.gpucheck import markdown


@pytest.mark.skipif(torch.cuda.is_available(), reason="this host has a GPU: gpu-check runs for real there")
def test_without_a_gpu_it_says_so_and_exits_0(tmp_path: Path) -> None:
    out = tmp_path / "report"
    r = subprocess.run(
        [sys.executable, "-m", "gpuworker.gpucheck", "--out", str(out)], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr
    assert "no CUDA GPU on this host" in r.stdout
    assert not out.exists()


def test_the_report_renders_every_section() -> None:
    report = {
        "host": {
            "python": "3.11",
            "torch": "2.x",
            "cuda": "12.4",
            "when": "now",
            "gpus": [
                {
                    "index": 0,
                    "name": "V100",
                    "total_bytes": 16 << 30,
                    "links": {"1": {"pcie": "host_bridge", "nvlinks": 2}},
                },
                {
                    "index": 1,
                    "name": "V100",
                    "total_bytes": 16 << 30,
                    "links": {"0": {"pcie": "host_bridge", "nvlinks": 2}},
                },
            ],
        },
        "tests": [{"test": "test_peer", "outcome": "passed", "seconds": 1.0, "detail": ""}],
        "swap": [
            {
                "model": "resnet50",
                "mib": 97.5,
                "warm_ms": 5.0,
                "swap_then_exec_ms": 14.0,
                "pipelined_ms": 10.0,
                "pinned_copy_ms": 8.5,
                "swap_ms": 9.0,
                "swap_gbps": 11.3,
                "swap_bw_over_copy_bw": 0.94,
                "pipelined_over_max_copy_warm": 1.18,
                "pipelined_over_serial": 0.71,
            }
        ],
        "peer": [
            {
                "source": 0,
                "target": 1,
                "p2p_access": True,
                "peer_gbps": 44.0,
                "host_gbps_of_target": 11.0,
                "peer_over_host": 4.0,
            }
        ],
    }
    md = markdown(report)
    assert "GPU 1: host_bridge, 2 NVLink" in md and "1 passed, 0 failed" in md
    assert "| resnet50 | 97.5 |" in md and "| 0 | 1 | True | 44.0 | 11.0 | 4.00 |" in md
