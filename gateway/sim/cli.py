"""`torpor simulate` and `torpor profile`: the scheduler on a virtual clock, and this machine's profile."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any, NoReturn

from shared.specs import ENCODINGS

POLICY_NAMES = ("torpor", "simpleswap", "native")
# Defaults of a generated workload; with --trace, functions and minutes come from the file.
GENERATED = argparse.Namespace(
    functions=200, minutes=10, rate=0.15, sigma=1.0, burstiness=0.5, percentile=98.0, max_batch=1, seed=0
)


def add_commands(sub: Any) -> None:
    s = sub.add_parser(
        "simulate",
        help="run the scheduler on a hardware profile and a trace (no processes, virtual time)",
        description="Simulate one node: the live scheduler object on a discrete-event clock.",
    )
    s.add_argument("--profile", default="v100x4", help="a profile file, or a built-in name (default v100x4)")
    s.add_argument("--trace", help="per-minute invocation counts in the Azure Functions 2019 CSV layout")
    s.add_argument(
        "--policy",
        default="torpor",
        help=f"{', '.join(POLICY_NAMES)} or torpor+split (pipeline-parallel cold starts), each optionally with "
        "+drop_late; a comma list; or all (default torpor)",
    )
    s.add_argument(
        "--workload",
        help="a workload JSON file of Workload's fields (or a built-in name: paper); options given here win",
    )
    s.add_argument(
        "--functions", type=int, help=f"functions deployed (default: all of --trace's, else {GENERATED.functions})"
    )
    s.add_argument("--sweep", help="FROM:TO:STEP function counts: the density curve (e.g. 40:800:40)")
    s.add_argument(
        "--minutes", type=int, help=f"minutes simulated (default {GENERATED.minutes}; fewer if the trace is shorter)"
    )
    s.add_argument("--shape", choices=("lognormal", "uniform"), help="generated trace (default lognormal)")
    s.add_argument("--rate", type=float, help=f"lognormal: mean requests/s per function (default {GENERATED.rate})")
    s.add_argument(
        "--sigma", type=float, help=f"lognormal: spread of rates across functions (default {GENERATED.sigma})"
    )
    s.add_argument(
        "--burstiness",
        type=float,
        help=f"lognormal: 0 = steady Poisson, 1 = very bursty (default {GENERATED.burstiness})",
    )
    s.add_argument("--rpm", help="uniform: LOW:HIGH requests per minute per function (default 5:30)")
    s.add_argument(
        "--slo-factor", type=float, help="SLO = factor × exec time (default: the profile model's slo_ms, else 5)"
    )
    s.add_argument("--slo-ms", type=float, help="one SLO for every function instead of --slo-factor")
    s.add_argument("--percentile", type=float, help="SLO percentile (default 98)")
    s.add_argument("--models", nargs="+", default=[], help="models of the profile to use (default all)")
    s.add_argument("--max-batch", type=int, help="dynamic batching limit per function (default 1)")
    s.add_argument("--drop-late", action="store_true", help="functions drop requests that cannot meet the SLO")
    s.add_argument(
        "--admit-utilization",
        help="admission's bound: a share of device time (default the policy's, 0.85 for torpor), or off",
    )
    s.add_argument("--nodes", type=int, default=1, help="identical nodes, routed and placed by the cluster policy")
    s.add_argument(
        "--placement",
        choices=("cluster", "static"),
        default="cluster",
        help="with --nodes: the cluster policy (forwarding, replicas, rehoming) or a fixed round-robin split",
    )
    s.add_argument("--hop-ms", type=float, default=1.0, help="cluster: latency a forward adds")
    s.add_argument("--node-link-gbps", type=float, default=1.25, help="cluster: GB/s between nodes (image fetches)")
    s.add_argument("--kill-node", type=int, help="cluster: lose this node (0-based) at --kill-at seconds")
    s.add_argument("--kill-at", type=float, default=60.0, help="cluster: when --kill-node is lost")
    s.add_argument("--seed", type=int, help="trace and jitter seed (default 0)")
    s.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="processes for --sweep")
    s.add_argument("--out", default="sim-out", help="directory for JSON summaries and PNG figures")
    s.set_defaults(func=_simulate)

    p = sub.add_parser("profile", help="measure this machine into a hardware profile for the simulator")
    p.add_argument("--devices", default="cpu:2", help="cpu:N, or cuda / cuda:0,1")
    p.add_argument("--device-memory", default="4GiB", help="per-device budget for models")
    p.add_argument("--models", nargs="+", default=["resnet18", "resnet50", "resnet152", "bert-base"])
    p.add_argument("--max-batch", type=int, default=8, help="batch size profiled besides 1")
    p.add_argument("--threads", type=int, default=1, help="compute threads per CPU device")
    p.add_argument(
        "--window",
        type=float,
        default=60.0,
        help="seconds over which CPU execution times are sampled, every model in turn (the host's speed drifts)",
    )
    p.add_argument(
        "--encoding",
        choices=ENCODINGS,
        default="json",
        help="the request bodies whose cost is timed: JSON tensors, or Triton's binary extension (as the load test's)",
    )
    p.add_argument("--out", default="profile.json")
    p.set_defaults(func=_profile)


def _settle_options(args: argparse.Namespace) -> None:
    """Fill the defaults that depend on other options, and refuse combinations that make no sense.

    Every refusal is one line naming the options and what to do instead (SystemExit).
    """
    trace_shaping = [f"--{k}" for k in ("rate", "sigma", "burstiness") if getattr(args, k) is not None]
    if args.trace and trace_shaping:
        _refuse(f"{', '.join(trace_shaping)}: only for a generated trace; with --trace the counts come from the file")
    if args.slo_ms is not None and args.slo_factor is not None:
        _refuse("give --slo-ms (one SLO for every function) or --slo-factor (a multiple of each model's exec time)")
    if args.sweep and args.functions is not None:
        _refuse("--sweep FROM:TO:STEP sets the function counts; drop --functions")
    if args.workload:
        # A workload file supplies what is not given here; Workload checks the values.
        return
    for key, value in vars(GENERATED).items():
        if getattr(args, key) is None and not (args.trace and key in ("functions", "minutes")):
            setattr(args, key, value)
    if args.trace:
        from shared import traces

        try:
            shape = traces.read_azure_csv(args.trace, minutes=1)  # one column: the function count is what we need
            minutes = _trace_minutes(args.trace)
        except OSError as exc:
            _refuse(f"--trace {args.trace}: {exc.strerror or exc}")
        available = len(shape.functions)
        if args.minutes is None:
            args.minutes = min(GENERATED.minutes, minutes)
        elif args.minutes > minutes:
            _refuse(f"--minutes {args.minutes}: the trace {args.trace} has {minutes} (the default: 10 or all if fewer)")
        wanted = _sweep(args.sweep)[-1] if args.sweep else args.functions
        if wanted is not None and wanted > available:
            option = "--sweep" if args.sweep else "--functions"
            _refuse(f"{option} asks for {wanted} functions; the trace {args.trace} has {available} (the default: all)")
        if args.functions is None:
            args.functions = available
    checks = (
        ("--functions", args.functions >= 1, "at least 1"),
        ("--minutes", args.minutes >= 1, "at least 1"),
        ("--nodes", 1 <= args.nodes, "at least 1"),
        ("--max-batch", 1 <= args.max_batch <= 256, "from 1 to 256"),
        ("--seed", args.seed >= 0, "0 or more"),
        ("--jobs", args.jobs >= 1, "at least 1"),
        ("--percentile", 0 < args.percentile < 100, "between 0 and 100 exclusive, e.g. 98"),
        ("--rate", args.rate > 0, "above 0 requests/s"),
        ("--sigma", args.sigma >= 0, "0 or more"),
        ("--burstiness", 0 <= args.burstiness <= 1, "from 0 to 1"),
        ("--slo-factor", args.slo_factor is None or args.slo_factor > 0, "above 0"),
        ("--slo-ms", args.slo_ms is None or args.slo_ms > 0, "above 0 ms"),
    )
    for option, ok, expected in checks:
        if not ok:
            _refuse(f"{option} {getattr(args, option[2:].replace('-', '_'))}: expected {expected}")
    fewest = _sweep(args.sweep)[0] if args.sweep else args.functions
    if args.nodes > fewest:
        _refuse(f"--nodes {args.nodes}: more nodes than functions ({fewest}); every node needs one")


def _sweep(text: str) -> list[int]:
    try:
        lo, hi, step = (int(x) for x in text.split(":"))
    except ValueError:
        _refuse("--sweep: expected FROM:TO:STEP, e.g. 40:800:40")
    if not 1 <= lo <= hi or step < 1:
        _refuse(f"--sweep {text}: expected 1 <= FROM <= TO and STEP >= 1")
    return list(range(lo, hi + 1, step))


def _trace_minutes(path: str) -> int:
    import csv

    with open(path, newline="", encoding="utf-8-sig") as f:
        return len(next(csv.reader(f))) - 4  # the header was checked by read_azure_csv


def _refuse(message: str) -> NoReturn:
    raise SystemExit(f"torpor simulate: {message}")


WORKLOADS = Path(__file__).parent / "workloads"


def _admit_utilization(text: str | None) -> float | None:
    """None: the policy's own bound; 0.0: off."""
    from shared.config import parse_admit_utilization
    from shared.errors import InvalidInput

    try:
        return None if text is None else parse_admit_utilization(text) or 0.0
    except InvalidInput as exc:
        raise ValueError(exc.message) from None


def _workload(args: argparse.Namespace, functions: int | None) -> Any:
    """The workload file's fields (if any), overridden by the options given on the command line."""
    from gateway.sim.run import Workload, load_workload

    given: dict[str, Any] = {
        "functions": functions,
        "minutes": args.minutes,
        "shape": args.shape,
        "mean_rate": args.rate,
        "sigma": args.sigma,
        "burstiness": args.burstiness,
        "slo_factor": args.slo_factor,
        "slo_ms": args.slo_ms,
        "percentile": None if args.percentile is None else args.percentile / 100,
        "models": tuple(args.models) or None,
        "max_batch": args.max_batch,
        "drop_late": args.drop_late or None,
        "admit_utilization": _admit_utilization(args.admit_utilization),
        "seed": args.seed,
        "trace": args.trace,
        "nodes": args.nodes,
        "placement": args.placement,
        "hop_ms": args.hop_ms,
        "link_gbps": args.node_link_gbps,
        "kill_node": args.kill_node,
        "kill_at": args.kill_at,
    }
    if args.rpm:
        from shared import traces

        try:
            given["rpm_low"], given["rpm_high"] = traces.parse_rpm(args.rpm)
        except ValueError as exc:
            raise ValueError(f"--rpm: {exc}") from None
    given = {k: v for k, v in given.items() if v is not None}
    if args.workload:
        path = Path(args.workload)
        if not path.exists() and (WORKLOADS / f"{args.workload}.json").exists():
            path = WORKLOADS / f"{args.workload}.json"
        return load_workload(path, **given)
    return Workload(**{"functions": 200, **given})


def _policies(text: str) -> list[str]:
    from gateway.decisions import POLICIES
    from gateway.sim.run import DROP_LATE, variant

    chosen = [*POLICY_NAMES, f"torpor{DROP_LATE}"] if text == "all" else text.split(",")
    bad = [p for p in chosen if variant(p)[0] not in POLICIES]
    if bad:
        raise SystemExit(
            f"torpor simulate: --policy: unknown {bad}; expected {', '.join(POLICIES)} (each may end in "
            f"{DROP_LATE}: every function drops requests that cannot meet the SLO), a comma list, or all"
        )
    return chosen


def _simulate(args: argparse.Namespace) -> int:
    try:
        _settle_options(args)
        return _run_simulation(args)
    except (ValueError, OSError) as exc:  # a bad profile, trace or workload: say which, no traceback
        raise SystemExit(f"torpor simulate: {exc}") from None


def _run_simulation(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from gateway.sim import plots
    from gateway.sim.profile import load
    from gateway.sim.run import density, summary, variant, write_json

    try:
        profile = load(args.profile)
    except ValueError as exc:
        raise SystemExit(f"torpor simulate: {exc}") from None
    out = Path(args.out)
    policies = _policies(args.policy)
    if args.sweep:
        counts = _sweep(args.sweep)
        curves = density(args.profile, _workload(args, counts[0]), counts, policies, jobs=args.jobs)
        write_json(curves, out / "density.json")
        where = profile.name if args.nodes == 1 else f"{args.nodes} nodes of {profile.name}"
        png = plots.density_figure(curves, f"{where}: functions meeting their SLO", out / "density.png")
        print(f"{'functions':>9}" + "".join(f"{p:>19}" for p in policies))
        for i, n in enumerate(counts):
            print(f"{n:>9}" + "".join(f"{curves[p][i]['functions_meeting_slo']:>19}" for p in policies))
        for p in policies:
            all_ok = [pt["functions"] for pt in curves[p] if pt["functions_meeting_slo"] == pt["functions"]]
            print(f"{p}: every function within its SLO up to {max(all_ok, default=0)} functions")
        print(f"wrote {out / 'density.json'} and {png}")
        return 0
    print(f"{'policy':<18}{'meeting SLO':>12}{'requests':>10}{'dropped':>9}{'p50 ms':>9}{'p99 ms':>9}{'util':>7}")
    for policy in policies:
        name, drop_late = variant(policy)
        w = _workload(args, args.functions)
        s = summary(profile, replace(w, drop_late=w.drop_late or drop_late), name)
        s["policy"] = policy
        write_json(s, out / f"summary-{policy}.json")
        plots.run_figures(s, out / policy)
        util = sum(d["utilization"] for d in s["devices"]) / len(s["devices"])
        lat = s["latency_ms"]
        print(
            f"{policy:<18}{s['functions_meeting_slo']:>6}/{s['functions_with_requests']:<5}{s['requests']:>10}"
            f"{s['dropped']:>9}{_ms(lat['p50']):>9}{_ms(lat['p99']):>9}{util:>7.2f}"
        )
    print(f"wrote {out}/summary-<policy>.json and {out}/<policy>/*.png")
    return 0


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def _profile(args: argparse.Namespace) -> int:
    from gateway.sim.measure import measure_profile
    from gateway.sim.profile import dump
    from gateway.sim.run import write_json
    from shared import shm
    from shared.config import parse_devices, parse_size

    shm.exit_on_sigterm()  # a kill still stops the request-timing server and unlinks the segments
    if not 0 <= args.window <= 3600:
        raise SystemExit(f"torpor profile: --window: expected 0 to 3600 seconds, got {args.window:g}")
    devices = parse_devices(args.devices)
    memory = parse_size(args.device_memory, "--device-memory")
    profile = measure_profile(
        devices,
        memory,
        args.models,
        args.max_batch,
        args.threads,
        progress=print,
        window_s=args.window,
        encoding=args.encoding,
    )
    path = write_json(dump(profile, memory), Path(args.out))
    print(f"wrote {path}")
    return 0
