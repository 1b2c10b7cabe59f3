from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.server import Server, shm_segments_of

# Models deployed on the shared server; with 2 devices of 512 MiB they cannot all be resident.
DEPLOYED = {"mlp": "mlp", "r18": "resnet18", "r50": "resnet50", "r152": "resnet152", "bert": "bert-base"}


@pytest.fixture(scope="package")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    state = tmp_path_factory.mktemp("e2e") / "state"
    srv = Server(state, "--max-body", "16MiB").start()
    try:
        for name, zoo_name in DEPLOYED.items():
            r = srv.deploy(name, {"model": {"zoo": zoo_name}, "slo_ms": 5000})
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
