"""Static checks of the deployment files: docker-compose.yml, the Dockerfiles, Prometheus
and Grafana provisioning. Docker is not needed; the files are parsed and cross-checked
against each other and against the code (CLI env names, packages, the pinned torch)."""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
STATE_DIR = "/var/lib/torpor"
READY = "/v2/health/ready"

# The metrics the gateway exports, with their labels (`le` on histogram buckets).
METRICS: dict[str, set[str]] = {
    "torpor_requests_total": {"function", "outcome"},
    "torpor_request_duration_seconds_bucket": {"function", "le"},
    "torpor_queue_duration_seconds_bucket": {"function", "le"},
    "torpor_swap_duration_seconds_bucket": {"function", "le"},
    "torpor_exec_duration_seconds_bucket": {"function", "le"},
    "torpor_deploy_duration_seconds_bucket": {"function", "le"},
    "torpor_slo_attainment_ratio": {"function"},
    "torpor_queue_depth": {"function"},
    "torpor_swaps_total": {"device", "source"},
    "torpor_swap_bytes_total": {"device", "source"},
    "torpor_evictions_total": {"device"},
    "torpor_device_resident_bytes": {"device"},
    "torpor_device_budget_bytes": {"device"},
    "torpor_device_busy_ratio": {"device"},
    "torpor_shed_functions": set(),
    "torpor_admitted_demand_ratio": set(),
}
# Labels Prometheus adds to every scraped series.
TARGET_LABELS = {"job", "instance"}

# Paths the compose file refers to that another change adds later.
NOT_YET_WRITTEN: set[Path] = set()  # every file the deployment refers to exists


# -- helpers --------------------------------------------------------------------------
def _load_yaml(path: Path) -> Any:
    # Only the YAML checks need PyYAML; the Dockerfile and dashboard checks run without it.
    yaml = pytest.importorskip("yaml", reason="PyYAML is not installed (pyyaml, test extra)")
    with path.open() as f:
        return yaml.safe_load(f)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return _load_yaml(ROOT / "docker-compose.yml")


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    return compose["services"]


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads((DOCKER / "grafana" / "dashboards" / "torpor.json").read_text())


_DEFAULTED = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")


def _interpolate(value: str) -> str:
    """What compose makes of `${VAR:-default}` with nothing set in the environment."""
    return _DEFAULTED.sub(lambda m: m.group(2) or "", value)


def _size_bytes(text: str) -> int:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([kmg]?)b?", text.strip().lower())
    assert m, f"not a compose byte size: {text!r}"
    return int(float(m.group(1)) * {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[m.group(2)])


def _bind_mounts(service: dict[str, Any]) -> list[tuple[Path, str]]:
    """(host path relative to the repo, container path) of each bind mount."""
    mounts = []
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):  # not a named volume
            mounts.append((Path(source), target))  # Path drops the leading "./"
    return mounts


def _host_path(service: dict[str, Any], container_path: str) -> Path | None:
    """The repository path a container path comes from through a bind mount, if any."""
    for source, target in _bind_mounts(service):
        target_path = PurePosixPath(target)
        path = PurePosixPath(container_path)
        if path == target_path or target_path in path.parents:
            return source / path.relative_to(target_path)
    return None


def _dockerfile(name: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in (DOCKER / name).read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, args = line.partition(" ")
        instructions.append((keyword.upper(), args.strip()))
    assert not pending, f"{name} ends in a continuation line"
    return instructions


def _args(instructions: list[tuple[str, str]], keyword: str) -> list[str]:
    return [args for kw, args in instructions if kw == keyword]


def _arg_defaults(instructions: list[tuple[str, str]]) -> dict[str, str]:
    return dict(a.split("=", 1) for a in _args(instructions, "ARG") if "=" in a)


def _substitute(text: str, values: dict[str, str]) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: values.get(m.group(1), m.group(0)), text)


def _cli_env_names() -> set[str]:
    """TORPOR_* names `torpor serve` reads (shared.config.env prefixes TORPOR_)."""
    source = (ROOT / "gateway" / "cli.py").read_text()
    return {f"TORPOR_{name}" for name in re.findall(r'\benv\("([A-Z_]+)"', source)}


# -- docker-compose.yml ---------------------------------------------------------------
def test_compose_services_and_profiles(services: dict[str, Any]) -> None:
    profiles = {name: set(svc.get("profiles", [])) for name, svc in services.items()}
    assert profiles == {
        "torpor": set(),  # started by a plain `docker compose up`
        "redis": set(),
        "torpor-cpu": {"cpu"},
        "prometheus": {"monitoring"},
        "grafana": {"monitoring"},
        "locust": {"loadtest"},
        "node-a": {"cluster"},
        "node-b": {"cluster"},
        "node-c": {"cluster"},
    }
    assert services["redis"]["image"].startswith("redis:7")
    assert services["prometheus"]["image"].startswith("prom/prometheus")
    assert services["grafana"]["image"].startswith("grafana/grafana")
    # locust runs from torpor's CPU image, which has the locustfile's imports installed
    assert services["locust"]["image"] == services["torpor-cpu"]["image"]
    assert services["locust"]["entrypoint"] == ["locust"]


def test_gpu_service_reserves_every_nvidia_gpu(services: dict[str, Any]) -> None:
    devices = services["torpor"]["deploy"]["resources"]["reservations"]["devices"]
    assert any(
        d.get("driver") == "nvidia" and d.get("count") == "all" and "gpu" in d.get("capabilities", []) for d in devices
    ), devices
    assert "deploy" not in services["torpor-cpu"], "the CPU service must start on a host without a GPU"


@pytest.mark.parametrize(
    ("service", "dockerfile"), [("torpor", "docker/Dockerfile"), ("torpor-cpu", "docker/Dockerfile.cpu")]
)
def test_torpor_services(services: dict[str, Any], service: str, dockerfile: str) -> None:
    svc = services[service]
    assert svc["build"]["dockerfile"] == dockerfile
    # Model images (and CPU arenas) live in /dev/shm: Docker's 64 MB default holds none.
    assert "shm_size" in svc or svc.get("ipc") == "host", f"{service} has no /dev/shm sizing"
    if "shm_size" in svc:
        assert _size_bytes(_interpolate(str(svc["shm_size"]))) >= 4 << 30
    test = svc["healthcheck"]["test"]
    assert test[0] == "CMD" and any(READY in part for part in test), test
    assert any(p.split(":")[-1] == "8080" for p in map(str, svc["ports"])), svc["ports"]
    assert any(v.split(":")[1] == STATE_DIR for v in svc["volumes"] if ":" in v), svc["volumes"]
    assert svc.get("stop_grace_period"), "the gateway needs time to drain and unlink its shared memory"


def test_torpor_environment_names_are_read_by_the_cli(services: dict[str, Any]) -> None:
    known = _cli_env_names()
    assert "TORPOR_DEVICE_MEMORY" in known  # the parser found the CLI's env() calls
    for service in ("torpor", "torpor-cpu"):
        env = services[service]["environment"]
        assert env, service
        unknown = {name for name in env if name not in known}
        assert not unknown, f"{service} sets variables torpor never reads: {sorted(unknown)}"


@pytest.mark.parametrize("name", ["node-a", "node-b", "node-c"])
def test_cluster_nodes(services: dict[str, Any], name: str) -> None:
    svc = services[name]
    assert svc["image"] == services["torpor-cpu"]["image"] and "deploy" not in svc
    env = svc["environment"]
    unknown = {k for k in env if k not in _cli_env_names()}
    assert not unknown, f"{name} sets variables torpor never reads: {sorted(unknown)}"
    assert _interpolate(str(env["TORPOR_CLUSTER"])) == "redis://redis:6379/0"
    assert "TORPOR_CLUSTER_TOKEN" in env and "TORPOR_ADMIN_TOKEN" in env
    command = svc["command"]
    # Each node its own name, reached by the others on the compose network at its own URL.
    assert command[command.index("--node") + 1] == name
    assert command[command.index("--advertise") + 1] == f"http://{name}:8080"
    assert command[command.index("--host") + 1] == "0.0.0.0"
    assert svc["depends_on"]["redis"]["condition"] == "service_healthy"
    assert any(v.split(":")[1] == STATE_DIR for v in svc["volumes"]), svc["volumes"]
    assert _size_bytes(_interpolate(str(svc["shm_size"]))) >= 1 << 30
    assert svc["healthcheck"]["test"][0] == "CMD"
    # Parsed by the real CLI: every flag the node is started with exists.
    from gateway.cli import parser

    args = parser().parse_args(command[1:])
    assert args.node == name and args.devices == "cpu:1"


def test_cluster_nodes_publish_distinct_ports(services: dict[str, Any]) -> None:
    published = [str(p).split(":")[-2] for n in ("node-a", "node-b", "node-c") for p in services[n]["ports"]]
    assert len(set(published)) == 3, published
    volumes = [v.split(":")[0] for n in ("node-a", "node-b", "node-c") for v in services[n]["volumes"]]
    assert len(set(volumes)) == 3, "each node needs its own state volume"


def test_shm_comment_names_the_alternative() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    assert "/dev/shm" in text and "ipc: host" in text


def test_locust_targets_the_gateway(services: dict[str, Any]) -> None:
    command = services["locust"]["command"]
    command = shlex.split(command) if isinstance(command, str) else [_interpolate(c) for c in command]
    assert command[command.index("-f") + 1] == "/mnt/loadtest/locustfile.py"
    assert command[command.index("--host") + 1] == "http://torpor:8080"
    assert _host_path(services["locust"], "/mnt/loadtest/locustfile.py") == Path("loadtest/locustfile.py")


def test_every_referenced_path_exists(services: dict[str, Any]) -> None:
    referenced: list[Path] = []
    for svc in services.values():
        build = svc.get("build")
        if build:
            context = Path(build["context"] if isinstance(build, dict) else build)
            referenced.append(context)
            if isinstance(build, dict) and "dockerfile" in build:
                referenced.append(context / build["dockerfile"])
        referenced += [source for source, _ in _bind_mounts(svc)]
    # Files a container is told to read through its mounts.
    referenced.append(_host_path(services["locust"], "/mnt/loadtest/locustfile.py"))
    config_flag = next(a for a in services["prometheus"]["command"] if a.startswith("--config.file="))
    referenced.append(_host_path(services["prometheus"], config_flag.split("=", 1)[1]))

    assert Path("docker/prometheus.yml") in referenced and Path("docker/Dockerfile.cpu") in referenced
    missing = [p for p in referenced if p not in NOT_YET_WRITTEN and not (ROOT / p).exists()]
    assert not missing, f"docker-compose.yml refers to missing paths: {missing}"


# -- Prometheus and Grafana -------------------------------------------------------------
def test_prometheus_scrapes_the_gateway() -> None:
    config = _load_yaml(DOCKER / "prometheus.yml")
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "torpor")
    assert job.get("metrics_path", "/metrics") == "/metrics"
    assert job.get("scrape_interval", config["global"]["scrape_interval"]) == "5s"
    targets = [t for sc in job["static_configs"] for t in sc["targets"]]
    assert "torpor:8080" in targets


def test_grafana_provisioning_points_at_the_mounted_files(services: dict[str, Any], dashboard: dict[str, Any]) -> None:
    grafana = services["grafana"]
    provisioning = _host_path(grafana, "/etc/grafana/provisioning")
    assert provisioning == Path("docker/grafana/provisioning")

    datasources = _load_yaml(ROOT / provisioning / "datasources" / "prometheus.yml")["datasources"]
    prom = next(d for d in datasources if d["type"] == "prometheus")
    assert prom["url"] == "http://prometheus:9090"

    providers = _load_yaml(ROOT / provisioning / "dashboards" / "torpor.yml")["providers"]
    folder = _host_path(grafana, providers[0]["options"]["path"])
    assert folder is not None, "the dashboard provider's path is not mounted into grafana"
    assert (ROOT / folder / "torpor.json").is_file()

    used = {t["datasource"]["uid"] for p in _panels(dashboard) for t in p.get("targets", [])}
    assert used == {prom["uid"]}, "dashboard queries must use the provisioned datasource"


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    panels = []
    for panel in dashboard["panels"]:
        panels.append(panel)
        panels += panel.get("panels", [])  # panels inside collapsed rows
    return panels


_METRIC = re.compile(r"\btorpor_\w+")
_SELECTOR = re.compile(r"\b(torpor_\w+)\s*\{([^}]*)\}")
_GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
_LABEL_VALUES = re.compile(r"\blabel_values\(\s*(torpor_\w+)\s*,\s*(\w+)\s*\)")


def _check_expr(expr: str) -> list[str]:
    """Problems of one PromQL expression against METRICS; empty when it is fine."""
    names = _METRIC.findall(expr)
    if not names:
        return [f"queries no torpor metric: {expr}"]
    problems = [f"unknown metric {n}" for n in names if n not in METRICS]
    for name, matchers in _SELECTOR.findall(expr):
        for label in re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", matchers):
            if label not in METRICS.get(name, set()) | TARGET_LABELS:
                problems.append(f"{name} has no label {label!r}")
    available = set().union(*(METRICS.get(n, set()) for n in names)) | TARGET_LABELS
    for name, label in _LABEL_VALUES.findall(expr):  # Grafana template variables
        if label not in METRICS.get(name, set()) | TARGET_LABELS:
            problems.append(f"{name} has no label {label!r}")
    for grouping in _GROUPING.findall(expr):
        for label in filter(None, (g.strip() for g in grouping.split(","))):
            if label not in available:
                problems.append(f"grouping by {label!r}, which none of {sorted(set(names))} has")
    return problems


def test_expression_checker_rejects_what_it_should() -> None:
    assert _check_expr('sum by (outcome) (rate(torpor_requests_total{function=~"x"}[1m]))') == []
    assert _check_expr("rate(torpor_request_total[1m])")  # misspelt metric
    assert _check_expr('torpor_swaps_total{function="x"}')  # label the metric lacks
    assert _check_expr("sum by (device) (torpor_queue_depth)")  # grouping label it lacks
    assert _check_expr("up")  # not a torpor metric at all
    assert _check_expr("label_values(torpor_device_busy_ratio, function)")  # variable on a missing label


def test_dashboard_queries_use_known_metrics_and_labels(dashboard: dict[str, Any]) -> None:
    assert 36 <= dashboard["schemaVersion"] <= 41
    exprs = [t["expr"] for p in _panels(dashboard) for t in p.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        query = variable["query"]
        exprs.append(query["query"] if isinstance(query, dict) else query)
    problems = {e: _check_expr(e) for e in exprs}
    assert not {e: p for e, p in problems.items() if p}
    # Every metric the gateway exports is on the dashboard.
    assert {n for e in exprs for n in _METRIC.findall(e)} == set(METRICS)


def test_dashboard_panels_are_well_formed(dashboard: dict[str, Any]) -> None:
    panels = _panels(dashboard)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        if panel["type"] != "row":
            assert panel["targets"], f"panel {panel['title']!r} has no query"
            ref_ids = [t["refId"] for t in panel["targets"]]
            assert len(ref_ids) == len(set(ref_ids)), panel["title"]
    quantiles = {
        float(q)
        for p in panels
        for t in p.get("targets", [])
        for q in re.findall(r"histogram_quantile\(([\d.]+),.*?torpor_request_duration_seconds_bucket", t["expr"])
    }
    assert {0.5, 0.98, 0.99} <= quantiles


# -- Dockerfiles ----------------------------------------------------------------------
DOCKERFILES = ["Dockerfile", "Dockerfile.cpu"]


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_runs_as_non_root(name: str) -> None:
    instructions = _dockerfile(name)
    users = _args(instructions, "USER")
    assert users, f"{name} has no USER"
    assert users[-1].split(":")[0] not in ("root", "0")
    last_user = max(i for i, (kw, _) in enumerate(instructions) if kw == "USER")
    assert all(kw != "RUN" for kw, _ in instructions[last_user:]), "USER must come after the last RUN"
    assert any(users[-1] in run and "useradd" in run for run in _args(instructions, "RUN"))


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_serves_on_8080_with_a_readiness_check(name: str) -> None:
    instructions = _dockerfile(name)
    assert any("8080" in a.split() for a in _args(instructions, "EXPOSE"))
    (healthcheck,) = _args(instructions, "HEALTHCHECK")
    assert READY in healthcheck and "127.0.0.1:" in healthcheck
    assert healthcheck.split(" CMD ", 1)[1].lstrip().startswith("["), "exec form: no shell needed"
    assert any(STATE_DIR in v for v in _args(instructions, "VOLUME"))


@pytest.mark.parametrize(("name", "devices"), [("Dockerfile", "cuda"), ("Dockerfile.cpu", "cpu:2")])
def test_dockerfile_command(name: str, devices: str) -> None:
    (cmd,) = _args(_dockerfile(name), "CMD")
    assert json.loads(cmd) == ["torpor", "serve", "--host", "0.0.0.0", "--devices", devices, "--state-dir", STATE_DIR]


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_copies_every_package(name: str) -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    copied = set()
    for args in _args(_dockerfile(name), "COPY"):
        sources = [a for a in args.split() if not a.startswith("--")][:-1]  # the last is the destination
        copied.update(s.rstrip("/") for s in sources)
    assert pyproject["project"]["readme"] in copied and "pyproject.toml" in copied
    for pattern in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]:
        for package in ROOT.glob(pattern):
            if (package / "__init__.py").is_file():
                assert package.name in copied, f"{name} does not copy package {package.name}"
    for source in copied:
        assert (ROOT / source).exists(), f"{name} copies missing {source}"


def test_gpu_image_uses_a_cuda_pytorch_base() -> None:
    instructions = _dockerfile("Dockerfile")
    (base,) = _args(instructions, "FROM")
    base = _substitute(base, _arg_defaults(instructions))
    assert re.fullmatch(r"pytorch/pytorch:[\d.]+-cuda[\d.]+-cudnn\d+-runtime", base), base
    # torch comes with the base image: torpor alone is installed on top.
    runs = " ".join(_args(instructions, "RUN"))
    assert "pip install ." in runs and "torch==" not in runs


def test_cpu_image_installs_the_pinned_cpu_torch() -> None:
    instructions = _dockerfile("Dockerfile.cpu")
    values = _arg_defaults(instructions)
    (base,) = _args(instructions, "FROM")
    assert _substitute(base, values).startswith("python:3.11")
    runs = [_substitute(r, values) for r in _args(instructions, "RUN")]
    torch_run = next(r for r in runs if "torch==" in r)
    assert "--index-url https://download.pytorch.org/whl/cpu" in torch_run
    pin = re.search(r"torch==([\w.+]+)", torch_run).group(1)
    makefile = (ROOT / "Makefile").read_text()
    pinned = re.search(rf"^TORCH_CPU\s*\?=\s*torch=={re.escape(pin)}\s*$", makefile, re.M)
    assert pinned, f"torch=={pin} differs from the Makefile's TORCH_CPU"
    torpor_run = next(i for i, r in enumerate(runs) if re.search(r"pip install \"?\.", r))
    assert runs.index(torch_run) < torpor_run, "torch before torpor"
