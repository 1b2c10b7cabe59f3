from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from loadtest.server import Server, shm_segments_of

# Function -> (zoo model, seed) on the shared server. With 2 devices of 512 MiB they
# cannot all be resident: no two of bert, bert2 (418 MiB each) and r152 (230 MiB) fit together.
DEPLOYED = {
    "mlp": ("mlp", 0),
    "r18": ("resnet18", 0),
    "r50": ("resnet50", 0),
    "r152": ("resnet152", 0),
    "bert": ("bert-base", 0),
    "bert2": ("bert-base", 1),
}


@pytest.fixture(scope="package")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    state = tmp_path_factory.mktemp("e2e") / "state"
    srv = Server(state, "--max-body", "16MiB").start()
    try:
        for name, (zoo_name, seed) in DEPLOYED.items():
            # heavy set, not measured: eviction order (light models first) must not depend on
            # how this machine's memory bandwidth happened to behave at deploy.
            r = srv.deploy(name, {"model": {"zoo": zoo_name, "seed": seed}, "slo_ms": 5000, "heavy": True})
            assert r.status_code == 201, r.text
        yield srv
    finally:
        pid = srv.pid
        code = srv.stop()
        assert code == 0, srv.log()
        assert shm_segments_of(pid) == [], "shared memory left behind after shutdown"


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"
