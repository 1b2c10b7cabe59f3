"""shared.hostload: the host's cores kept busy by other processes, read from /proc."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from shared.hostload import BusyMeter, background_cores, process_cpu_s

BURN = "import time\nt = time.process_time()\nwhile time.process_time() - t < {s}: pass\n"


def test_a_process_trees_cpu_time_counts_its_children() -> None:
    """A parent waiting on a child that burns CPU: the tree's CPU time includes the child's."""
    child = [sys.executable, "-c", BURN.format(s=0.6)]
    parent = subprocess.Popen([sys.executable, "-c", f"import subprocess; subprocess.run({child!r})"])
    try:
        deadline = time.monotonic() + 30
        while process_cpu_s(parent.pid) < 0.5 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert process_cpu_s(parent.pid) >= 0.5, "the child's burn, counted under its parent"
    finally:
        parent.wait(timeout=30)
    assert process_cpu_s(parent.pid) == 0.0, "reaped: gone from /proc"


def test_the_meter_leaves_out_the_given_process_tree() -> None:
    """Two meters over the same child's burn: one counting every process, one leaving out this
    test's own tree (the child included). They differ by the child's CPU over the interval."""
    everything, others = BusyMeter().start(), BusyMeter(os.getpid()).start()
    t0 = time.monotonic()
    before = process_cpu_s(os.getpid())
    subprocess.run([sys.executable, "-c", BURN.format(s=0.8)], check=True)
    used = process_cpu_s(os.getpid()) - before
    elapsed = time.monotonic() - t0
    a, b = everything.stop(), others.stop()
    assert used >= 0.8
    assert a - b == pytest.approx(used / elapsed, abs=0.15)
    assert 0 <= b <= os.cpu_count()


def test_background_is_a_share_of_the_hosts_cores() -> None:
    assert 0 <= background_cores(0.3) <= os.cpu_count()
