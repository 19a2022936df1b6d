"""The HTTP API fuzzed from its own OpenAPI schema (schemathesis), on a real uvicorn server on
127.0.0.1: requests that fit the schema and requests that break it, none answered with a 5xx,
and every answer one the schema declares (its status, content type and body).

schemathesis' pytest fixture loader (`schemathesis.pytest.from_fixture`) does not run under
pytest 9, so each operation's strategies drive a plain hypothesis test here.
"""

from __future__ import annotations

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from edgeroute.schemas import HealthReport, Invalid, Problem
from tests.services import edge_service

EXAMPLES = 25  # per operation and mode: a few seconds in all
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


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
def test_no_generated_request_gets_a_server_error_or_an_undeclared_answer(api, mode):
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
            response = case.call_and_validate(base_url=api.url, checks=CHECKS)
            statuses.add(response.status_code)

        call()
    # The fuzzing reached what it aimed at: answers for valid requests, refusals for broken ones.
    assert statuses & ({200} if mode == GenerationMode.POSITIVE else {400, 413, 422})


# A request that gets each error status the schema declares (401 and 504: tests/edgeroute/test_server.py).
ERRORS = [
    ("/v1/classify", b'{"text": "\xff\xfe"}', 400),
    ("/v1/classify", b'{"text": ', 422),
    ("/v1/classify", {"texts": ["x" * 501]}, 413),
    ("/v1/classify", {"texts": []}, 422),
    ("/v1/classify", {"txt": "typo"}, 422),
    ("/v1/feedback", {"request_id": "nobody", "label": "positive"}, 404),
    ("/v1/feedback", {"request_id": "r", "label": "no-such-label"}, 422),
]


def test_every_error_is_declared_for_its_operation_and_matches_its_schema(api):
    schema = httpx.get(f"{api.url}/openapi.json").json()
    declared = {path: set(ops["post"]["responses"]) for path, ops in schema["paths"].items() if "post" in ops}
    assert declared["/v1/classify"] >= {"200", "400", "401", "413", "422", "504"}
    assert declared["/v1/feedback"] >= {"200", "400", "401", "404", "409", "413", "422"}
    assert {"FeedbackResponse", "HealthReport", "Invalid", "Problem"} <= set(schema["components"]["schemas"])
    result = httpx.post(f"{api.url}/v1/classify", json={"text": "where is my parcel"}).json()["results"][0]
    first = {"request_id": result["request_id"], "label": result["label"]}
    assert httpx.post(f"{api.url}/v1/feedback", json=first).status_code == 200
    other = next(label for label in ("negative", "neutral", "positive") if label != result["label"])
    for path, body, status in [*ERRORS, ("/v1/feedback", first | {"label": other}, 409)]:
        sent = {"content": body} if isinstance(body, bytes) else {"json": body}
        response = httpx.post(f"{api.url}{path}", headers={"Content-Type": "application/json"}, **sent)
        assert response.status_code == status, (path, body, response.text)
        assert str(status) in declared[path]
        (Invalid if status == 422 else Problem).model_validate(response.json())
    health = httpx.get(f"{api.url}/v1/health").json()
    assert HealthReport.model_validate(health).model_version == "test/1"
