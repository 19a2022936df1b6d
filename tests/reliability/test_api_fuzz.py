"""The HTTP API fuzzed from its own OpenAPI schema (schemathesis), on a real uvicorn server on
127.0.0.1: requests that fit the schema and requests that break it, none answered with a 5xx.

schemathesis' pytest fixture loader (`schemathesis.pytest.from_fixture`) does not run under
pytest 9, so each operation's strategies drive a plain hypothesis test here.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from tests.services import edge_service

EXAMPLES = 25  # per operation and mode: a few seconds in all


@pytest.fixture(scope="module")
def api(tiny_bundle, tmp_path_factory):
    running, audit = edge_service(
        tiny_bundle,
        tmp_path_factory.mktemp("fuzz"),
        None,
        None,
        "limits.max_text_chars=500",
        "limits.max_batch=16",
    )
    yield running
    running.stop()
    audit.close()


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_generated_request_gets_a_server_error(api, mode):
    schema = schemathesis.openapi.from_url(f"{api.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {f"{op.method.upper()} {op.path}" for op in operations} >= {
        "POST /v1/classify",
        "POST /v1/feedback",
    }
    statuses: set[int] = set()
    for operation in operations:
        if mode == GenerationMode.NEGATIVE and operation.method.upper() != "POST":
            continue  # no parameters to break

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None
        )
        def call(case):
            response = case.call_and_validate(base_url=api.url, checks=[not_a_server_error])
            statuses.add(response.status_code)

        call()
    # The fuzzing reached what it aimed at: answers for valid requests, refusals for broken ones.
    assert statuses & ({200} if mode == GenerationMode.POSITIVE else {400, 413, 422})
