"""Generated requests against the gateway's own OpenAPI description: never a 5xx, never a crash."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from gateway.openapi import document
from loadtest.server import Server

pytestmark = pytest.mark.e2e

schema = schemathesis.openapi.from_dict(document())


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_errors(case: schemathesis.Case, server: Server) -> None:
    # 503/504 are answers about load, not crashes; everything else must be < 500.
    response = case.call(base_url=server.url, timeout=60)
    assert response.status_code < 500 or response.status_code in (503, 504), (
        case.method,
        case.formatted_path,
        response.status_code,
        response.text[:300],
    )
    assert "Traceback" not in response.text
    if case.operation.path in ("/v1/functions/{name}", "/v1/functions/{name}/invoke"):
        case.validate_response(response, checks=[not_a_server_error])


def test_openapi_is_served(server: Server) -> None:
    doc = server.client.get("/openapi.json").json()
    assert doc["openapi"].startswith("3.") and "/v2/models/{name}/infer" in doc["paths"]
