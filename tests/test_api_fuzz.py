"""The HTTP API against its own OpenAPI document, fuzzed by schemathesis: no server error, every status and
body as documented. Real gateway (uvicorn, as served), real embedded Triton (reduced models)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from gateway_helpers import running_gateway
from hypothesis import HealthCheck, given, settings
from schemathesis import checks

from gateway.settings import Settings
from gateway.triton.server import EmbeddedTriton

pytestmark = [pytest.mark.triton, pytest.mark.slow]

CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
]


@pytest.fixture(scope="module")
def api_schema(triton_server: EmbeddedTriton) -> Iterator[schemathesis.BaseSchema]:
    with running_gateway(Settings(triton_url=triton_server.grpc_url, demo=True)) as url:  # type: ignore[call-arg]
        yield schemathesis.openapi.from_url(f"{url}/openapi.json")


def test_the_api_keeps_to_its_description(api_schema: schemathesis.BaseSchema) -> None:
    # Each operation gets its own Hypothesis run (schemathesis' pytest plugin does not support pytest 9 yet).
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/avatars", "/v1/lipsync", "/readyz", "/metrics", "/v1/info"}
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
        def check(case: schemathesis.Case) -> None:
            case.call_and_validate(checks=CHECKS, timeout=120)

        check()
