"""Schema-driven fuzzing with schemathesis against the `sonomask serve` child.

Every operation in the OpenAPI schema gets a bounded number of generated requests, valid
and invalid. None may give a 5xx except a deliberate 503 with Retry-After.
"""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, settings

from scripts.hardening.server import ServerProcess
from service.app import create_app
from service.config import Settings

EXAMPLES_PER_OPERATION = 50

# DICOM bodies are bytes like any binary upload; without this alias schemathesis skips them.
schemathesis.serializer.alias("application/dicom", "application/octet-stream")

# The schema comes from the app object, which needs no model to describe its routes. The
# requests go to the child server, which runs the same code.
schema = schemathesis.openapi.from_dict(create_app(Settings()).openapi())


def test_schema_lists_every_route() -> None:
    paths = set(schema.raw_schema["paths"])
    assert {"/v1/mask", "/v1/detect", "/healthz", "/readyz", "/metrics"} <= paths


@schema.parametrize()
@settings(
    max_examples=EXAMPLES_PER_OPERATION,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    database=None,
)
def test_no_server_errors(case, child_server: ServerProcess) -> None:
    mark = child_server.mark()
    response = case.call(base_url=child_server.base_url, timeout=60)

    body = response.content
    assert response.status_code < 500 or response.status_code == 503, (
        f"{case.method} {case.path} gave {response.status_code}: {body[:300]!r}"
    )
    if response.status_code == 503:
        assert response.headers.get("Retry-After"), "a 503 must carry Retry-After"
    assert b"Traceback" not in body
    traces = [line for line in child_server.log_lines_since(mark) if "Traceback" in line]
    assert traces == []
