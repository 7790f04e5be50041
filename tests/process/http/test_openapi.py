"""The OpenAPI document: valid OpenAPI 3.1, covering every route, and true of a real appliance when fuzzed."""

from __future__ import annotations

from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from openapi_spec_validator import validate
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.core.result import Ok

from daemon.http.status_page import ASSETS

pytestmark = pytest.mark.slow

FUZZ_EXAMPLES = 15
"""Examples per operation: 18 operations in about 25 seconds on two shared cores."""


@pytest.fixture()
def document(shared_appliance):
    answer = requests.get(f"{shared_appliance.url}/openapi.json", timeout=5)
    assert answer.status_code == 200
    return answer.json()


def test_the_document_is_valid_openapi_and_names_every_route(document):
    validate(document)
    assert document["openapi"] == "3.1.0"
    assert set(document["paths"]) == {
        "/",
        "/shards",
        *ASSETS,  # the status page's script and style
        "/healthz",
        "/readyz",
        "/metrics",
        "/openapi.json",
        "/predict",
        "/v2",
        "/v2/health/live",
        "/v2/health/ready",
        *(
            f"/v2/models/{{model_name}}{prefix}{suffix}"
            for prefix in ("", "/versions/{model_version}")
            for suffix in ("", "/ready", "/infer")
        ),
    }


def operations(document: dict[str, Any]) -> list[Any]:
    """Every operation of the document; one the loader cannot read fails the test."""
    found = []
    for result in schemathesis.openapi.from_dict(document).get_all_operations():
        assert isinstance(result, Ok), result
        found.append(result.ok())
    return found


def test_fuzzed_requests_get_documented_answers_and_never_an_unexpected_5xx(shared_appliance, document):
    # Driven by hand rather than by schemathesis' pytest plugin, whose fixture loader does not run on pytest 9.
    checks = [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_schema_conformance,
    ]
    tried = []
    for operation in operations(document):

        @given(case=operation.as_strategy())
        @settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
        def call(case: Any) -> None:
            case.call_and_validate(base_url=shared_appliance.url, checks=checks, timeout=15)

        call()
        tried.append(operation.label)
    assert len(tried) == 18, tried
