"""Who may call what: the classify key, the feedback keys and their sources, and the feedback
rate of a source; on a real service on 127.0.0.1."""

from __future__ import annotations

import json

import httpx
import pytest

from edgeroute.access import Access, RateLimit, read_feedback_keys
from edgeroute.audit import verify_trail
from edgeroute.config import ConfigError
from tests.services import BIN, edge_service, free_port, run_cli

KEYS = {"helpdesk": "helpdesk-key-1", "crm": "crm-key-12"}


def post(url: str, path: str, body: dict, key: str | None) -> httpx.Response:
    return httpx.post(f"{url}{path}", json=body, headers={"X-API-Key": key} if key else {})


def test_feedback_takes_a_key_of_its_own_and_is_recorded_under_its_source(tiny_bundle, tmp_path):
    running, audit = edge_service(tiny_bundle, tmp_path, access=Access("classify-key", KEYS))
    try:
        (answer,) = post(running.url, "/v1/classify", {"text": "where is my parcel"}, "classify-key").json()[
            "results"
        ]
        feedback = {"request_id": answer["request_id"], "label": answer["label"]}
        # The classify key may not give feedback, nor a feedback key classify: 403, each saying why.
        refused = post(running.url, "/v1/feedback", feedback, "classify-key")
        assert refused.status_code == 403 and "EDGEROUTE_FEEDBACK_KEYS" in refused.json()["detail"]
        elsewhere = post(running.url, "/v1/classify", {"text": "hi"}, KEYS["crm"])
        assert elsewhere.status_code == 403 and "only post /v1/feedback" in elsewhere.json()["detail"]
        assert httpx.get(f"{running.url}/v1/health", headers={"X-API-Key": KEYS["crm"]}).status_code == 403
        assert post(running.url, "/v1/feedback", feedback, None).status_code == 401
        assert post(running.url, "/v1/feedback", feedback, "wrong-key-00").status_code == 401

        given = post(running.url, "/v1/feedback", feedback, KEYS["crm"])
        assert given.status_code == 200 and given.json()["source"] == "crm"
        health = httpx.get(f"{running.url}/v1/health", headers={"X-API-Key": "classify-key"}).json()
        assert health["versions"]["test/1"]["feedback_sources"] == {"crm": 1}
        assert audit.recent(0, 10)[0]["feedback_source"] == "crm"
    finally:
        running.stop()
        audit.close()
    assert verify_trail(tmp_path / "audit.db")["feedback"] == 1  # the source is chained with the label


def test_an_open_service_names_a_feedback_source_by_the_client_address(tiny_bundle, tmp_path):
    running, audit = edge_service(tiny_bundle, tmp_path)
    try:
        (answer,) = post(running.url, "/v1/classify", {"text": "hi"}, None).json()["results"]
        feedback = {"request_id": answer["request_id"], "label": "neutral"}
        given = post(running.url, "/v1/feedback", feedback, None)
        assert given.status_code == 200 and given.json()["source"] == "address 127.0.0.1"
    finally:
        running.stop()
        audit.close()


def test_a_feedback_source_past_its_rate_gets_429_with_retry_after(tiny_bundle, tmp_path):
    running, audit = edge_service(
        tiny_bundle, tmp_path, None, None, "feedback.max_per_minute=3", access=Access(None, KEYS)
    )
    try:
        results = post(running.url, "/v1/classify", {"texts": [f"parcel {i}" for i in range(5)]}, None).json()
        bodies = [{"request_id": r["request_id"], "label": r["label"]} for r in results["results"]]
        assert [post(running.url, "/v1/feedback", b, KEYS["helpdesk"]).status_code for b in bodies[:3]] == [
            200
        ] * 3
        limited = post(running.url, "/v1/feedback", bodies[3], KEYS["helpdesk"])
        assert limited.status_code == 429 and "feedback.max_per_minute=3" in limited.json()["detail"]
        assert 1 <= int(limited.headers["Retry-After"]) <= 20
        # Another source keeps its own rate.
        assert post(running.url, "/v1/feedback", bodies[3], KEYS["crm"]).status_code == 200
    finally:
        running.stop()
        audit.close()


def test_a_sources_bucket_refills_at_its_rate():
    now = [0.0]
    limit = RateLimit(60, clock=lambda: now[0])
    assert [limit.take("a") for _ in range(60)] == [0.0] * 60
    assert limit.take("a") == pytest.approx(1.0) and limit.take("b") == 0.0
    now[0] = 0.5
    assert limit.take("a") == pytest.approx(0.5)
    now[0] = 2.0  # two posts' worth refilled: the burst is never more than a minute's
    assert [limit.take("a") for _ in range(2)] == [0.0, 0.0] and limit.take("a") > 0


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("{not json", "EDGEROUTE_FEEDBACK_KEYS: not JSON"),
        ('["helpdesk-key-1"]', "a JSON object of source name to key"),
        ("{}", "a JSON object of source name to key"),
        ('{"help desk": "helpdesk-key-1"}', "source 'help desk': 1 to 64 letters"),
        ('{"helpdesk": "short"}', "source 'helpdesk': the key must be a string of 8 characters"),
        ('{"helpdesk": 12345678}', "source 'helpdesk': the key must be a string"),
        ('{"a": "same-key-123", "b": "same-key-123"}', "two sources have the same key"),
    ],
)
def test_unusable_feedback_keys_are_refused_naming_the_variable_never_the_key(value, message):
    with pytest.raises(ConfigError) as refused:
        read_feedback_keys(value, "EDGEROUTE_FEEDBACK_KEYS")
    assert message in str(refused.value)
    assert "key-1" not in str(refused.value) and "same-key" not in str(refused.value)


def test_a_feedback_key_that_is_the_classify_key_is_refused():
    with pytest.raises(ConfigError, match="a feedback key is the classify key"):
        Access("helpdesk-key-1", KEYS)


def test_serve_exits_2_on_unusable_feedback_keys(tiny_bundle, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEROUTE_FEEDBACK_KEYS", json.dumps({"helpdesk": "short"}))
    served = run_cli(
        [str(BIN / "edgeroute"), "serve", "--bundle", str(tiny_bundle), "--port", str(free_port())], tmp_path
    )
    assert served.returncode == 2
    assert "EDGEROUTE_FEEDBACK_KEYS: source 'helpdesk': the key must be" in served.stderr
