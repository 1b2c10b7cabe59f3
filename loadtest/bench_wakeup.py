"""What waking a sleeping process costs on this host: a socket-pair ping-pong between two processes.

    python -m loadtest.bench_wakeup [--rounds 5000]

The parent sends 300 bytes and waits for them back, first at once after the previous round
trip (both sides stay busy), then after spinning for a gap (the child has gone to sleep by
then). Each request through `torpor serve` has two more such wake-ups (gateway -> worker and
back) than a bare HTTP echo, so the difference printed here is part of the added latency that
`loadtest.bench_overhead` measures. On a VM whose idle vCPUs halt at once, it is large.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import time
from pathlib import Path

GAPS_US = (0, 50, 200, 1000)


def round_trips(sock: socket.socket, rounds: int, gap_s: float) -> list[float]:
    payload = b"x" * 300
    out = []
    for _ in range(rounds):
        t1 = time.perf_counter()
        while time.perf_counter() - t1 < gap_s:
            pass  # spin: the parent stays awake, only the child sleeps
        t0 = time.perf_counter()
        sock.sendall(payload)
        got = 0
        while got < len(payload):
            got += len(sock.recv(65536))
        out.append((time.perf_counter() - t0) * 1e6)
    return out[rounds // 10 :]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5000)
    args = ap.parse_args()
    parent, child = socket.socketpair()
    pid = os.fork()
    if pid == 0:  # the echoing side: blocks in recv between rounds
        parent.close()
        while data := child.recv(65536):
            child.sendall(data)
        os._exit(0)
    child.close()
    try:
        idle = Path("/sys/module/haltpoll/parameters/guest_halt_poll_ns")
        note = f"; guest_halt_poll_ns {idle.read_text().strip()}" if idle.exists() else ""
        print(f"socket-pair round trip between two processes, p50 of {args.rounds} (µs){note}")
        base = None
        for gap in GAPS_US:
            p50 = statistics.median(round_trips(parent, args.rounds, gap * 1e-6))
            base = p50 if base is None else base
            print(f"    other side idle {gap:>5} µs before: {p50:6.1f}   ({p50 / base:.2f}x the busy round trip)")
    finally:
        parent.close()
        os.waitpid(pid, 0)


if __name__ == "__main__":
    main()
