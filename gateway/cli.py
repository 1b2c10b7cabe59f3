"""The `torpor` command: serve, and a client for the HTTP API (deploy, invoke, ls, rm)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from gateway import progress
from shared.config import ServeConfig, env, format_size, parse_admit_utilization, parse_devices, parse_size
from shared.errors import InvalidInput
from shared.specs import random_inputs

DEFAULT_URL = "http://127.0.0.1:8080"


def _serve(args: argparse.Namespace) -> int:
    from gateway.serve import serve

    if not 0 <= args.port <= 65535:
        raise InvalidInput(f"--port: expected 0 to 65535 (0: any free port), got {args.port}")
    devices = parse_devices(args.devices)
    cfg = ServeConfig(
        host=args.host,
        port=args.port,
        devices=devices,
        device_memory=parse_size(args.device_memory, "--device-memory") if args.device_memory else None,
        host_memory=parse_size(args.host_memory, "--host-memory") if args.host_memory else None,
        state_dir=Path(args.state_dir),
        demo=args.demo,
        compute_threads=args.compute_threads,
        max_body_bytes=parse_size(args.max_body, "--max-body"),
        swap_group_bytes=parse_size(args.swap_group, "--swap-group"),
        log_level=args.log_level,
        admin_token=args.admin_token or None,
        max_queue=args.max_queue,
        max_queued=args.max_queued,
        hang_timeout_s=args.hang_timeout,
        exec_timeout_s=args.exec_timeout,
        admit_utilization=parse_admit_utilization(args.admit_utilization),
        split=args.split == "on",
        heartbeat_s=min(2.0, args.hang_timeout / 2),
    )
    cluster = None
    if args.cluster:
        from gateway.cluster.config import cluster_config

        cluster = cluster_config(
            args.cluster,
            args.node,
            args.advertise,
            args.cluster_token,
            args.host,
            args.port,
            cfg.host_memory or 0,  # one bound: the disk tier keeps to it, cluster placement plans with it
            args.max_replicas,
        )
    return serve(cfg, cluster)


# -- client commands ------------------------------------------------------------------
def _http(args: argparse.Namespace, method: str, path: str, body: Any = None) -> Any:
    import httpx

    token = getattr(args, "token", None) or env("TOKEN")
    headers = {"authorization": f"Bearer {token}"} if token else {}
    try:
        r = httpx.request(method, args.url.rstrip("/") + path, json=body, timeout=args.timeout, headers=headers)
    except httpx.HTTPError as exc:
        raise SystemExit(f"torpor: cannot reach {args.url}: {exc}") from exc
    try:
        data = r.json()
    except ValueError:
        data = {"error": r.text}
    if r.status_code >= 400:
        raise SystemExit(f"torpor: {method} {path} failed ({r.status_code}): {data.get('error', data)}")
    return data, r


def _deploy(args: argparse.Namespace) -> int:
    model: dict[str, Any] = {"zoo": args.zoo} if args.zoo else {"path": os.path.abspath(args.file)}
    if args.zoo and args.seed is not None:
        model["seed"] = args.seed
    body: dict[str, Any] = {"model": model, "slo_ms": args.slo_ms}
    if args.input_spec:
        body["input_spec"] = json.loads(Path(args.input_spec).read_text())
    for key in ("slo_percentile", "max_batch_size", "drop_late", "heavy"):
        if getattr(args, key) is not None:
            body[key] = getattr(args, key)
    # Building, packing and profiling a large model takes seconds: show that it is under way.
    with progress.spinner(f"deploying {args.name} (building, packing and profiling the model)"):
        data, r = _http(args, "PUT", f"/v1/functions/{args.name}", body)
    verb = "deployed" if r.status_code == 201 else "replaced"
    print(
        f"{verb} {data['name']}: {format_size(data['model_bytes'])}, "
        f"SLO {data['slo_ms']:g} ms at p{data['slo_percentile']:g}"
    )
    return 0


def _invoke(args: argparse.Namespace) -> int:
    if args.random:
        meta, _ = _http(args, "GET", f"/v2/models/{args.name}")
        body = {"inputs": random_inputs(meta["inputs"], args.batch)}
    elif args.data:
        body = json.loads(Path(args.data).read_text())
    else:
        raise SystemExit("torpor invoke: give --random or --data FILE")
    data, r = _http(args, "POST", f"/v1/functions/{args.name}/invoke", body)
    h = r.headers
    print(
        f"device {h['x-torpor-device']} {'cold' if h['x-torpor-cold'] == '1' else 'warm'}: "
        f"queue {float(h['x-torpor-queue-ms']):.1f} ms, swap {float(h['x-torpor-swap-ms']):.1f} ms, "
        f"exec {float(h['x-torpor-exec-ms']):.1f} ms",
        file=sys.stderr,
    )
    for o in data["outputs"]:
        preview = o["data"][:8]
        print(f"{o['name']} {o['datatype']}{o['shape']}: {preview}{' ...' if len(o['data']) > 8 else ''}")
    return 0


def _ls(args: argparse.Namespace) -> int:
    if args.nodes:
        return _ls_nodes(args)
    fns, _ = _http(args, "GET", "/v1/functions")
    devs, _ = _http(args, "GET", "/v1/devices")
    rows = [("FUNCTION", "MODEL", "SIZE", "SLO", "IN SLO", "P98", "QUEUED", "TIER", "RESIDENT ON")]
    for f in fns["functions"]:
        model = f["model"].get("zoo") or Path(f["model"].get("pt2", "?")).name
        where = ",".join(str(d) for d in f["resident_on"]) or "-"
        if f.get("state", "READY") != "READY":
            where = f"{f['state'].lower()} ({f['reason']})"
        stats = f.get("stats") or {}
        attained = stats.get("slo_attainment")
        p98 = stats.get("p98_ms")
        rows.append(
            (
                f["name"],
                model,
                format_size(f["model_bytes"]),
                f"{f['slo_ms']:g} ms @p{f.get('slo_percentile', 98):g}",
                "-" if attained is None else f"{attained:.1%}",
                "-" if p98 is None else f"{p98:.1f} ms",
                str(f["queue_depth"]),
                f.get("tier", "-"),
                where,
            )
        )
    _table(rows)
    print()
    rows = [("DEVICE", "KIND", "STATE", "RESIDENT", "BUDGET", "THREADS", "MODELS")]
    for d in devs["devices"]:
        state = "offline" if not d["online"] else ("busy" if d["busy"] else "idle")
        threads = f"{d.get('compute_threads', '?')}+{d.get('copy_threads', '?')} copy"
        rows.append(
            (
                str(d["device"]),
                d["label"],
                state,
                format_size(d["resident_bytes"]),
                format_size(d["budget_bytes"]),
                threads,
                str(len(d["resident"])),
            )
        )
    _table(rows)
    return 0


def _ls_nodes(args: argparse.Namespace) -> int:
    data, _ = _http(args, "GET", "/v1/nodes")
    rows = [("NODE", "URL", "STATE", "HEARTBEAT", "DEVICES", "HOST MEMORY", "QUEUED", "HOLDS", "RESIDENT", "SHED")]
    for n in data["nodes"]:
        budget = n["host_budget_bytes"]
        memory = format_size(n["host_used_bytes"]) + (f" / {format_size(budget)}" if budget else "")
        rows.append(
            (
                n["node"] + (" *" if n["node"] == data["node"] else ""),
                n["url"],
                n["state"],
                f"{n['heartbeat_age_s']:.1f} s ago",
                str(n["devices"]),
                memory,
                str(n["load"]["queued"]),
                ",".join(n["holds"]) or "-",
                ",".join(n["resident"]) or "-",
                ",".join(n.get("shed", ())) or "-",
            )
        )
    _table(rows)
    return 0


def _rm(args: argparse.Namespace) -> int:
    data, _ = _http(args, "DELETE", f"/v1/functions/{args.name}")
    print(f"deleted {data['deleted']}")
    return 0


def _table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="torpor", description="Serverless inference on shared accelerators.")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the gateway and one worker per device")
    s.add_argument("--host", default=env("HOST", "127.0.0.1"))
    s.add_argument("--port", type=int, default=int(env("PORT", "8080") or 8080))
    s.add_argument("--devices", default=env("DEVICES", "cpu:2"), help="cpu:N, cuda, or cuda:0,1 (default cpu:2)")
    s.add_argument("--device-memory", default=env("DEVICE_MEMORY"), help="per-device budget, e.g. 512MiB, 2GiB")
    s.add_argument(
        "--host-memory",
        default=env("HOST_MEMORY"),
        help="bound on the host memory model images take, e.g. 8GiB; functions beyond it stay on disk "
        "and are read in (pipelined with the swap-in) when invoked; in a cluster, also what placement "
        "plans with; default: no bound",
    )
    s.add_argument("--state-dir", default=env("STATE_DIR", ".torpor"), help="where deployed functions persist")
    s.add_argument("--demo", action="store_true", default=env("DEMO") == "1", help="deploy demo functions")
    s.add_argument("--compute-threads", type=int, default=None, help="torch threads per CPU device")
    s.add_argument("--max-body", default=env("MAX_BODY", "64MiB"), help="largest request body")
    s.add_argument("--swap-group", default=env("SWAP_GROUP", "2MiB"), help="swap-in copy group size")
    s.add_argument("--log-level", default=env("LOG_LEVEL", "info"))
    s.add_argument("--admin-token", default=env("ADMIN_TOKEN"), help="bearer token required to deploy and delete")
    s.add_argument(
        "--max-queue",
        type=int,
        default=int(env("MAX_QUEUE", "256") or 256),
        help="waiting requests per function before 429",
    )
    s.add_argument(
        "--max-queued",
        type=int,
        default=int(env("MAX_QUEUED", "4096") or 4096),
        help="waiting requests in all before 429",
    )
    s.add_argument(
        "--admit-utilization",
        default=env("ADMIT_UTILIZATION", "0.85"),
        help="shed the costliest functions while the admitted ones ask for more than this share of the "
        "devices' time and some miss their SLO (off: never shed)",
    )
    s.add_argument(
        "--split",
        choices=("off", "on"),
        default=env("SPLIT", "off"),
        help="split a cold start that would miss its SLO across idle devices on other PCIe switches, "
        "run it as a pipeline and consolidate it onto one (ParaServe); for GPUs: CPU devices share one "
        "memory bus and gain nothing (gpuworker/bench_pipeline.py)",
    )
    s.add_argument(
        "--hang-timeout",
        type=float,
        default=float(env("HANG_TIMEOUT", "10") or 10),
        help="seconds without a heartbeat answer before a worker is killed and restarted",
    )
    s.add_argument(
        "--exec-timeout",
        type=float,
        default=float(env("EXEC_TIMEOUT", "600") or 600),
        help="seconds one operation may run before its worker is deemed hung",
    )
    s.add_argument("--cluster", default=env("CLUSTER"), help="redis://[user:password@]host:port/db (rediss:// for TLS)")
    s.add_argument("--node", default=env("NODE"), help="this node's name in the cluster (default host:port)")
    s.add_argument("--advertise", default=env("ADVERTISE"), help="URL other nodes reach this one at")
    s.add_argument("--cluster-token", default=env("CLUSTER_TOKEN"), help="shared secret of node-to-node calls")
    s.add_argument(
        "--max-replicas",
        type=int,
        default=int(env("MAX_REPLICAS", "3") or 3),
        help="host copies of one function across the cluster (1: no replicas)",
    )
    s.set_defaults(func=_serve)

    def client(name: str, help: str) -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=help)
        c.add_argument("--url", default=env("URL", DEFAULT_URL))
        c.add_argument("--timeout", type=float, default=300.0)
        c.add_argument("--token", help="bearer token (admin token for deploy/rm; invoke token for invoke)")
        return c

    d = client("deploy", "deploy a model as a named function")
    d.add_argument("name")
    g = d.add_mutually_exclusive_group(required=True)
    g.add_argument("--zoo", help="a model of the built-in zoo (mlp, resnet18, resnet50, resnet152, bert-base)")
    g.add_argument("--file", help="a torch.export program saved with torch.export.save (.pt2)")
    d.add_argument("--seed", type=int, default=None)
    d.add_argument("--slo-ms", type=float, default=1000.0)
    d.add_argument("--input-spec", help="JSON file with a list of {name, datatype, shape}")
    d.add_argument("--slo-percentile", type=float, help="share of requests the SLO holds for (default 98)")
    d.add_argument("--max-batch-size", type=int, help="run up to this many waiting requests together")
    d.add_argument(
        "--drop-late",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="reject early (503) requests that can no longer meet the SLO",
    )
    d.add_argument(
        "--heavy",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="whether a concurrent swap slows the model down (default: measured at deploy)",
    )
    d.set_defaults(func=_deploy)

    i = client("invoke", "invoke a function")
    i.add_argument("name")
    i.add_argument("--random", action="store_true", help="a random valid input built from the input spec")
    i.add_argument("--batch", type=int, default=1)
    i.add_argument("--data", help="a JSON file with an OIP request body")
    i.set_defaults(func=_invoke)

    ls = client("ls", "list functions and devices")
    ls.add_argument("--nodes", action="store_true", help="list the cluster's nodes instead (GET /v1/nodes)")
    ls.set_defaults(func=_ls)
    r = client("rm", "delete a function")
    r.add_argument("name")
    r.set_defaults(func=_rm)

    from gateway.sim.cli import add_commands

    add_commands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.func(args))
    except InvalidInput as exc:
        print(f"torpor {args.command}: {exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
