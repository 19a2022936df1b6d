"""The HTTP service: real uvicorn on 127.0.0.1, real requests, a cloud-role service as a process."""

from __future__ import annotations

import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from edgeroute.access import Access
from edgeroute.audit import AuditLog
from edgeroute.bundle import load_bundle
from edgeroute.cloud import CircuitBreaker
from tests.services import CloudService, cloud_process, edge_service, free_port, stop

SECRET_TEXT = "my card 4111 1111 1111 1111 was charged twice, mail ben.482@example.com"


@pytest.fixture
def service(tiny_bundle, tmp_path):
    running, audit = edge_service(
        tiny_bundle, tmp_path, None, None, "limits.max_text_chars=200", "limits.max_batch=8"
    )
    yield running
    running.stop()
    audit.close()


@pytest.fixture(scope="module")
def texts(tiny_prepared):
    """Eight test messages within the service's limits.max_text_chars=200."""
    test = tiny_prepared[1].frame("test")
    return test[test["text"].str.len() <= 200][["text", "label"]].head(8)


def test_classify_one_text_or_a_batch(service, texts):
    one = httpx.post(f"{service.url}/v1/classify", json={"text": "where is my parcel"})
    assert one.status_code == 200
    body = one.json()
    assert body["model_version"] == "test/1" and len(body["results"]) == 1
    result = body["results"][0]
    assert result["route"] in {"edge", "cloud"} and result["reason"] and result["cost"] > 0
    batch = httpx.post(f"{service.url}/v1/classify", json={"texts": texts["text"].tolist()}).json()["results"]
    assert len(batch) == 8 and len({r["request_id"] for r in batch}) == 8
    assert {r["label"] for r in batch} <= {"negative", "neutral", "positive"}


@pytest.mark.parametrize(
    ("payload", "status", "message"),
    [
        ({"texts": ["fine", "x" * 201]}, 413, "texts[1]: 201 characters"),
        ({"texts": ["hello"] * 9}, 413, "9 texts"),
        ({"text": "\ufdfa" * 20}, 413, "text: 360 characters once normalised"),  # one ligature, 18 letters
        ({"text": "   "}, 422, "text: empty text"),
        ({"texts": []}, 422, "the batch is empty"),
        ({"text": "a", "texts": ["b"]}, 422, "exactly one of 'text'"),
        ({"texts": "not a list"}, 422, "texts"),
        ({"text": 5}, 422, "text"),
        ({"txt": "typo"}, 422, "txt"),
    ],
)
def test_bad_requests_get_a_clear_4xx(service, payload, status, message):
    response = httpx.post(f"{service.url}/v1/classify", json=payload)
    assert response.status_code == status
    assert message in str(response.json()["detail"])


def test_an_api_key_guards_the_api_but_not_the_probes(tiny_bundle, tmp_path):
    running, audit = edge_service(tiny_bundle, tmp_path, access=Access("s3cret"))
    try:
        assert httpx.post(f"{running.url}/v1/classify", json={"text": "hi"}).status_code == 401
        wrong = httpx.post(f"{running.url}/v1/classify", json={"text": "hi"}, headers={"X-API-Key": "nope"})
        assert wrong.status_code == 401 and "X-API-Key" in wrong.json()["detail"]
        right = httpx.post(f"{running.url}/v1/classify", json={"text": "hi"}, headers={"X-API-Key": "s3cret"})
        assert right.status_code == 200
        assert httpx.get(f"{running.url}/v1/health").status_code == 401
        assert httpx.get(f"{running.url}/healthz").status_code == 200
        assert httpx.get(f"{running.url}/readyz").status_code == 200
    finally:
        running.stop()
        audit.close()


def test_feedback_moves_accuracy_in_the_health_report(service, texts):
    results = httpx.post(f"{service.url}/v1/classify", json={"texts": texts["text"].tolist()}).json()[
        "results"
    ]
    for result in results:
        response = httpx.post(
            f"{service.url}/v1/feedback", json={"request_id": result["request_id"], "label": result["label"]}
        )
        assert response.status_code == 200 and response.json()["correct"] is True
    health = httpx.get(f"{service.url}/v1/health").json()
    assert health["metrics"]["accuracy"] == 1.0 and health["metrics"]["labelled"] == 8

    more = httpx.post(f"{service.url}/v1/classify", json={"texts": texts["text"].tolist()}).json()["results"]
    for result in more:
        wrong = next(label for label in ("negative", "neutral", "positive") if label != result["label"])
        httpx.post(f"{service.url}/v1/feedback", json={"request_id": result["request_id"], "label": wrong})
    health = httpx.get(f"{service.url}/v1/health").json()
    assert health["metrics"]["accuracy"] == 0.5
    assert "accuracy 0.5 below 0.85" in health["alerts"] and health["score"] <= 100 - 15 - 30 - 5

    unknown = httpx.post(f"{service.url}/v1/feedback", json={"request_id": "nope", "label": "positive"})
    assert unknown.status_code == 404 and "no decision 'nope'" in unknown.json()["detail"]
    bad = httpx.post(
        f"{service.url}/v1/feedback", json={"request_id": more[0]["request_id"], "label": "happy"}
    )
    assert bad.status_code == 422 and "'happy' is not one of" in bad.json()["detail"]


def test_the_audit_trail_holds_no_text_and_cannot_be_changed(service, tmp_path):
    result = httpx.post(f"{service.url}/v1/classify", json={"text": SECRET_TEXT}).json()["results"][0]
    database = tmp_path / "audit.db"
    with sqlite3.connect(database) as db:
        row = db.execute(
            "SELECT route, text_hash, text_chars FROM decisions WHERE request_id = ?", (result["request_id"],)
        ).fetchone()
        assert row is not None and row[0] == result["route"] and row[2] == len(SECRET_TEXT)
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            db.execute("UPDATE decisions SET route = 'edge'")
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            db.execute("DELETE FROM decisions")
    assert row[1] == AuditLog(database).text_hash(SECRET_TEXT)
    stored = b"".join(p.read_bytes() for p in tmp_path.glob("audit.db*") if not p.name.endswith(".key"))
    for fragment in (b"4111", b"ben.482", b"charged twice"):
        assert fragment not in stored


def test_prometheus_metrics_count_routes_and_reasons(service, texts):
    results = httpx.post(f"{service.url}/v1/classify", json={"texts": texts["text"].tolist()}).json()[
        "results"
    ]
    metrics = httpx.get(f"{service.url}/metrics").text
    edge = sum(r["route"] == "edge" for r in results)
    edge_lines = [
        line
        for line in metrics.splitlines()
        if line.startswith("edgeroute_decisions_total{") and 'route="edge"' in line
    ]
    assert sum(float(line.rsplit(" ", 1)[1]) for line in edge_lines) == edge
    assert all('model_version="test/1"' in line for line in edge_lines)
    assert "edgeroute_request_duration_seconds_bucket" in metrics
    assert f'edgeroute_edge_share_ratio{{model_version="test/1"}} {edge / len(results)}' in metrics
    assert 'edgeroute_model_info{slot="champion",version="test/1"} 1.0' in metrics
    # Prometheus' default collectors, as every Python exporter has them.
    assert "process_resident_memory_bytes" in metrics and "python_info{" in metrics


def test_a_cloud_service_stopped_mid_run_opens_the_breaker_which_closes_when_it_is_back(
    escalating_bundle, tmp_path, texts
):
    port = free_port()
    cloud = cloud_process(escalating_bundle, port, tmp_path)
    breaker = CircuitBreaker(failure_threshold=2, reset_after_s=1.0)
    edge, audit = edge_service(escalating_bundle, tmp_path, f"http://127.0.0.1:{port}", breaker)
    batch = {"texts": texts["text"].tolist()}
    try:
        first = httpx.post(f"{edge.url}/v1/classify", json=batch).json()["results"]
        assert {r["route"] for r in first} == {"cloud"}

        stop(cloud)
        for _ in range(3):
            answered = httpx.post(f"{edge.url}/v1/classify", json=batch)
            assert answered.status_code == 200
            assert {r["route"] for r in answered.json()["results"]} == {"edge"}
            assert "cloud_error" in {r["reason"] for r in answered.json()["results"]}
        assert httpx.get(f"{edge.url}/readyz").json()["cloud"] == "open"
        scraped = httpx.get(f"{edge.url}/metrics").text
        assert 'edgeroute_cloud_breaker_state{edgeroute_cloud_breaker_state="open"} 1.0' in scraped
        assert 'edgeroute_cloud_breaker_state{edgeroute_cloud_breaker_state="closed"} 0.0' in scraped
        assert 'edgeroute_cloud_request_duration_seconds_count{outcome="answered"} 1.0' in scraped
        assert 'edgeroute_cloud_request_duration_seconds_count{outcome="failed"}' in scraped
        assert "cloud circuit open" in httpx.get(f"{edge.url}/v1/health").json()["alerts"]

        cloud = cloud_process(escalating_bundle, port, tmp_path)
        time.sleep(1.1)  # past the reset time: the next escalation is the probe
        back = httpx.post(f"{edge.url}/v1/classify", json=batch).json()["results"]
        assert {r["route"] for r in back} == {"cloud"}
        assert httpx.get(f"{edge.url}/readyz").json()["cloud"] == "closed"
    finally:
        edge.stop()
        audit.close()
        stop(cloud)


def test_a_request_over_its_time_budget_gets_504(tiny_bundle, tmp_path):
    running, audit = edge_service(tiny_bundle, tmp_path, None, None, "limits.timeout_s=1e-6")
    try:
        response = httpx.post(f"{running.url}/v1/classify", json={"text": "where is my parcel"})
        assert response.status_code == 504 and "no answer within" in response.json()["detail"]
    finally:
        running.stop()
        audit.close()


def test_logs_carry_request_ids_never_text(service, caplog):
    with caplog.at_level("DEBUG"):
        result = httpx.post(f"{service.url}/v1/classify", json={"text": SECRET_TEXT}).json()["results"][0]
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert result["request_id"] in logged
    for fragment in ("4111", "ben.482", "charged twice"):
        assert fragment not in logged


def _concurrently(bundle, tmp_path, messages: list[str]) -> tuple[list[dict], float, float]:
    """Answers to ``messages`` sent by 16 clients at once, the model calls made and the texts routed."""

    running, audit = edge_service(bundle, tmp_path, None, None, "batching.max_texts=64")
    try:
        with httpx.Client() as client, ThreadPoolExecutor(16) as pool:
            answers = list(
                pool.map(
                    lambda t: client.post(f"{running.url}/v1/classify", json={"text": t}).json(), messages
                )
            )
        metrics = httpx.get(f"{running.url}/metrics").text
    finally:
        running.stop()
        audit.close()
    calls, routed = (
        next(
            float(line.split()[-1])
            for line in metrics.splitlines()
            if line.startswith(f"edgeroute_batch_texts_{s}")
        )
        for s in ("count", "sum")
    )
    return [a["results"][0] for a in answers], calls, routed


def test_concurrent_requests_are_micro_batched_and_answered_as_alone(tiny_bundle, tmp_path, texts):
    from edgeroute.bundle import load_bundle

    messages = texts["text"].tolist() * 8
    answers, calls, routed = _concurrently(tiny_bundle, tmp_path, messages)
    router = load_bundle(tiny_bundle).router()
    alone = [router.route([message])[0] for message in messages]
    assert [a["label"] for a in answers] == [d.label for d in alone]
    assert [a["reason"] for a in answers] == [d.reason for d in alone]
    # Static INT8: the same confidence as alone, whoever else shared the model call.
    assert [a["confidence"] for a in answers] == pytest.approx([d.confidence for d in alone], abs=1e-6)
    assert routed == len(messages)
    assert calls < len(messages)  # 16 clients at once: requests shared model calls


def test_a_batch_dependent_edge_model_answers_each_request_in_its_own_call(tiny_bundle, tmp_path, texts):
    from edgeroute.bundle import derive_bundle, load_bundle

    bundle = derive_bundle(
        load_bundle(tiny_bundle),
        tmp_path / "dynamic",
        replace={},
        metrics={},
        lineage={"batch_independent": False},
    )
    messages = texts["text"].tolist() * 4
    _, calls, routed = _concurrently(bundle, tmp_path, messages)
    assert calls == routed == len(messages)


def test_a_locked_audit_trail_answers_503_and_not_ready_until_it_is_free(tiny_bundle, tmp_path):
    running, audit = edge_service(tiny_bundle, tmp_path)
    classify = f"{running.url}/v1/classify"
    try:
        assert httpx.post(classify, json={"text": "where is my parcel"}).status_code == 200
        other = sqlite3.connect(tmp_path / "audit.db", isolation_level=None)  # another process's lock
        other.execute("BEGIN EXCLUSIVE")
        locked = httpx.post(classify, json={"text": "where is my parcel"}, timeout=30)
        assert locked.status_code == 503 and locked.headers["Retry-After"] == "1"
        assert "audit trail unavailable" in locked.json()["detail"] and "locked" in locked.json()["detail"]
        assert httpx.get(f"{running.url}/readyz").status_code == 503
        assert httpx.get(f"{running.url}/healthz").status_code == 200, "alive, only not ready"
        other.execute("COMMIT")
        other.close()
        assert httpx.post(classify, json={"text": "where is my parcel"}).status_code == 200
        assert httpx.get(f"{running.url}/readyz").status_code == 200
    finally:
        running.stop()
        audit.close()


def test_a_cloud_that_drips_its_answer_holds_no_answer_and_opens_the_circuit(
    escalating_bundle, tmp_path, tiny_prepared
):
    cloud = CloudService(load_bundle(escalating_bundle).router().cloud)
    cloud.drip_s = 1.0  # one byte a second: no read ever times out, the answer never ends in time
    breaker = CircuitBreaker(failure_threshold=3)
    edge, audit = edge_service(escalating_bundle, tmp_path, cloud.url, breaker, "limits.timeout_s=3.0")
    texts = tiny_prepared[1].frame("test")["text"].head(8).tolist()
    try:
        with httpx.Client(timeout=30) as client, ThreadPoolExecutor(8) as pool:
            answers = list(
                pool.map(lambda text: client.post(f"{edge.url}/v1/classify", json={"text": text}), texts)
            )
        # Every escalated text answered by the edge within the budget, none held by the cloud.
        assert [a.status_code for a in answers] == [200] * 8, [a.text for a in answers]
        assert {(a.json()["results"][0]["route"], a.json()["results"][0]["reason"]) for a in answers} == {
            ("edge", "cloud_error")
        }
        assert httpx.get(f"{edge.url}/readyz").json()["cloud"] == "open"
        asked = cloud.requests
        after = httpx.post(f"{edge.url}/v1/classify", json={"text": texts[0]}, timeout=30)
        assert after.status_code == 200 and after.json()["results"][0]["reason"] == "cloud_error"
        assert cloud.requests == asked, "an open circuit asks the cloud nothing"
    finally:
        edge.stop()
        audit.close()
        cloud.stop()
