"""schemathesis, every check, against a live server's own /openapi.json.

The server runs with an admin token. One run sends no credentials, so every operation is
generated (admin operations must answer 401); one run sends the token to every operation
except the two that deploy (PUT /v1/functions/{name} and repository load with a config),
which would build every generated zoo model. No function is deployed on this server: a
function's inputs cannot be written in one schema for every {name}, so a schema-valid
request to a real function can rightly be a 400 (tests/e2e/test_serving.py and
test_tritonclient.py cover real inference).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from loadtest.server import Server, shm_segments_of

pytestmark = pytest.mark.e2e

TOKEN = "schemathesis-admin-token"
ST = Path(sys.executable).with_name("st")
RUN = ["--checks", "all", "--phases", "examples,coverage,fuzzing,stateful", "--max-examples", "10", "--seed", "1"]


@pytest.fixture(scope="module")
def admin_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    state = tmp_path_factory.mktemp("schemathesis") / "state"
    srv = Server(state, "--admin-token", TOKEN, devices="cpu:1", memory="64MiB").start()
    try:
        yield srv
    finally:
        pid = srv.pid
        assert srv.stop() == 0, srv.log()
        assert shm_segments_of(pid) == []


def _schemathesis(server: Server, *args: str) -> None:
    cmd = [str(ST), "run", f"{server.url}/openapi.json", *RUN, "--workers", "1", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=server.state_dir.parent)
    assert done.returncode == 0, done.stdout[-8000:] + done.stderr[-2000:]
    assert " passed" in done.stdout and "failures" not in done.stdout.lower(), done.stdout[-4000:]


def test_all_checks_without_credentials(admin_server: Server) -> None:
    _schemathesis(admin_server)


def test_all_checks_with_the_admin_token(admin_server: Server) -> None:
    auth = ["-H", f"Authorization: Bearer {TOKEN}"]
    _schemathesis(admin_server, *auth, "--exclude-method", "PUT", "--exclude-path-regex", "/load$")


def test_openapi_is_served_and_allow_lists_every_method(server: Server) -> None:
    doc = server.client.get("/openapi.json").json()
    assert doc["openapi"].startswith("3.") and "/v2/models/{name}/versions/{version}/infer" in doc["paths"]
    assert "securitySchemes" not in doc["components"]  # no admin token on this server: nothing declared
    r = server.client.post("/v1/functions/mlp")
    assert r.status_code == 405 and r.json() == {"error": "Method Not Allowed"}
    assert set(r.headers["allow"].split(", ")) == {"GET", "HEAD", "PUT", "DELETE"}


def test_deploy_rejects_a_model_of_neither_shape(server: Server) -> None:
    for model in ({}, {"zoo": "mlp", "path": "/x.pt2"}):
        r = httpx.put(f"{server.url}/v1/functions/shape", json={"model": model, "slo_ms": 50})
        assert r.status_code == 400 and r.json()["error"].startswith("model: expected"), r.text
