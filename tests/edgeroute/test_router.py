"""The router on the tiny bundle: every decision reason, honest costs, masking, cloud failures."""

from __future__ import annotations

import json
import re
from dataclasses import replace

import numpy as np
import pytest

from edgeroute.bundle import load_bundle
from edgeroute.cloud import CircuitBreaker, GuardedCloud, HttpCloud, LocalCloud, remote_cloud
from edgeroute.config import load_serve_config
from edgeroute.privacy import mask
from edgeroute.router import (
    CLOUD_ERROR,
    HIGH_COMPLEXITY,
    LOW_CONFIDENCE,
    OPTIMAL_EDGE,
    UNFAMILIAR_TEXT,
    Router,
    RouterSettings,
    complexity_score,
    project,
    shadow_sample,
    summarize,
    unfamiliar_share,
)
from tests.services import CloudService, cloud_process, free_port, stop

EDGE_ONLY = {"min_confidence": 0.0, "max_complexity": 1.0, "max_unfamiliar_share": 1.0}
PERSONAL = [
    "My card 4111 1111 1111 1111 was charged twice, write to ben.482@example.com",
    "Call me on +1 555-467-9641 about order #871494, this is unacceptable",
]


class Capturing:
    """A cloud backend that records what it was sent, then answers with the local FP32 model."""

    name = "capturing"

    def __init__(self, cloud: LocalCloud) -> None:
        self.cloud, self.calls = cloud, []

    def classify(self, texts):
        self.calls.append(list(texts))
        return self.cloud.classify(texts)


@pytest.fixture(scope="module")
def bundle(tiny_bundle):
    return load_bundle(tiny_bundle)


@pytest.fixture(scope="module")
def texts(tiny_prepared):
    return tiny_prepared[1].frame("test")["text"].tolist()[:40]


@pytest.fixture
def local_cloud(bundle):
    return bundle.router().cloud


@pytest.fixture
def service(local_cloud):
    running = CloudService(local_cloud)
    yield running
    running.stop()


def make_router(bundle, cloud, **settings) -> Router:
    router = bundle.router(cloud)
    router.settings = replace(router.settings, **settings)
    return router


def test_confident_simple_queries_stay_on_the_edge_at_edge_cost(bundle, texts):
    router = make_router(bundle, None, **EDGE_ONLY)
    decisions = router.route(texts)
    assert {d.reason for d in decisions} == {OPTIMAL_EDGE}
    assert {d.route for d in decisions} == {"edge"}
    assert all(d.cost == router.settings.costs.edge and d.cloud_label is None for d in decisions)
    assert [d.label for d in decisions] == router.edge.predict(texts)


def test_low_confidence_escalates_to_the_cloud_and_pays_for_both(bundle, texts, local_cloud):
    capturing = Capturing(local_cloud)
    router = make_router(bundle, capturing, **EDGE_ONLY | {"min_confidence": 1.0})
    decisions = router.route(texts)
    assert {d.reason for d in decisions} == {LOW_CONFIDENCE}
    assert {d.route for d in decisions} == {"cloud"}
    costs = router.settings.costs
    assert all(d.cost == pytest.approx(costs.edge + costs.cloud) for d in decisions)
    # The cloud answered the texts masked, as it sees them.
    assert [d.label for d in decisions] == [a.label for a in local_cloud.classify([mask(t) for t in texts])]
    assert len(capturing.calls) == 1, "one cloud call for the escalated subset of a batch"


def test_high_complexity_escalates_long_angry_messages(bundle, local_cloud):
    angry = "I am furious and disgusted, this is unacceptable and I want a manager " * 4
    router = make_router(bundle, local_cloud, **EDGE_ONLY | {"max_complexity": 0.6})
    decisions = router.route([angry, "Thanks!"])
    assert [d.reason for d in decisions] == [HIGH_COMPLEXITY, OPTIMAL_EDGE]
    assert decisions[0].complexity > 0.6 > decisions[1].complexity


def test_unfamiliar_text_escalates(bundle, local_cloud):
    router = make_router(bundle, local_cloud, **EDGE_ONLY | {"max_unfamiliar_share": 0.3})
    decisions = router.route(["Zqxjkv wvbnmq pftgh", "thanks"])
    assert [d.reason for d in decisions] == [UNFAMILIAR_TEXT, OPTIMAL_EDGE]
    assert decisions[0].unfamiliar_share > 0.5


def test_reasons_are_checked_in_order_of_priority(bundle, local_cloud):
    everything = {"min_confidence": 1.0, "max_complexity": 0.0, "max_unfamiliar_share": 0.0}
    router = make_router(bundle, local_cloud, **everything)
    assert {d.reason for d in router.route(["Zqxjkv wvbnmq furious"])} == {LOW_CONFIDENCE}


def test_the_cloud_never_receives_personal_data(bundle, local_cloud):
    capturing = Capturing(local_cloud)
    router = make_router(bundle, capturing, **EDGE_ONLY | {"min_confidence": 1.0})
    decisions = router.route([*PERSONAL, "no personal data here"])
    sent = capturing.calls[0]
    assert len(sent) == 3 and {d.route for d in decisions} == {"cloud"}
    joined = " ".join(sent)
    for raw in ("4111", "ben.482", "@", "555-467", "871494"):
        assert raw not in joined
    assert "<CREDIT_CARD>" in sent[0] and "<PHONE_NUMBER>" in sent[1] and sent[2] == "no personal data here"


def test_a_card_split_across_two_escalated_texts_never_reaches_the_cloud_whole(bundle, local_cloud):
    capturing = Capturing(local_cloud)
    router = make_router(bundle, capturing, **EDGE_ONLY | {"min_confidence": 1.0})
    decisions = router.route(["my card is 4111 1111", "1111 1111 was charged twice", "hello"])
    sent = capturing.calls[0]
    assert sent == ["my card is <NUMBER>", "<NUMBER> was charged twice", "hello"]
    assert [d.masked_text for d in decisions] == sent, "each decision says what the cloud was sent"
    # Masked alone, as sent together: a text's batch-mates never change what the cloud sees.
    assert [router.route([text])[0].masked_text for text in ("hello", "1111 1111 was charged twice")] == [
        "hello",
        "<NUMBER> was charged twice",
    ]


def test_a_cloud_answer_larger_than_the_cap_is_a_cloud_error(bundle, service, local_cloud):
    from edgeroute.cloud import MAX_ANSWER_BYTES

    def padded(texts):
        answers = json.dumps({"results": [a.__dict__ for a in local_cloud.classify(texts)]}).encode()
        return 200, answers + b" " * MAX_ANSWER_BYTES  # valid JSON, only too large

    service.reply = padded
    router = make_router(bundle, HttpCloud(service.url, max_retries=0), **EDGE_ONLY | {"min_confidence": 1.0})
    assert {d.reason for d in router.route(["where is my parcel", "thanks"])} == {CLOUD_ERROR}


def test_a_failed_cloud_returns_the_edge_answer_with_cloud_error(bundle, texts, service):
    service.stop()  # nothing listens on the port any more
    router = make_router(bundle, HttpCloud(service.url, max_retries=1, backoff_s=0.01), min_confidence=1.0)
    decisions = router.route(texts[:5])
    assert {d.reason for d in decisions} == {CLOUD_ERROR}
    assert {d.route for d in decisions} == {"edge"}
    assert [d.label for d in decisions] == router.edge.predict(texts[:5])


def test_http_cloud_retries_server_errors_then_answers(bundle, texts, service, local_cloud):
    service.fail_next = 2
    answers = HttpCloud(service.url, max_retries=2, backoff_s=0.01).classify(texts[:3])
    assert service.requests == 3
    assert [a.label for a in answers] == [a.label for a in local_cloud.classify(texts[:3])]


def test_more_texts_than_a_cloud_service_takes_in_one_request_are_sent_in_several(
    tiny_bundle, tiny_prepared, tmp_path
):
    # Calibrating on a split larger than the cloud service's limits.max_batch (256) was answered 413.
    many = [t for name in ("train", "validation") for t in tiny_prepared[1].frame(name)["text"]][:300]
    port = free_port()
    process = cloud_process(tiny_bundle, port, tmp_path)
    try:
        config = load_serve_config(None, [f"cloud.url=http://127.0.0.1:{port}"]).cloud
        answers = remote_cloud(config, load_bundle(tiny_bundle).labels).classify(many)
    finally:
        stop(process)
    assert [a.label for a in answers] == [
        a.label for a in load_bundle(tiny_bundle).router().cloud.classify(many)
    ]


def test_http_cloud_gives_up_after_its_retries_and_on_timeouts(service, texts):
    service.fail_next = 5
    with pytest.raises(RuntimeError, match="answered 503"):
        HttpCloud(service.url, max_retries=1, backoff_s=0.01).classify(texts[:1])
    assert service.requests == 2
    service.fail_next, service.delay_s = 0, 0.5
    with pytest.raises(RuntimeError, match="unreachable"):
        HttpCloud(service.url, timeout_s=0.1, max_retries=0).classify(texts[:1])


def test_the_breaker_opens_after_failures_and_closes_when_the_cloud_is_back(bundle, texts, service):
    now = [0.0]
    breaker = CircuitBreaker(failure_threshold=2, reset_after_s=30, clock=lambda: now[0])
    router = make_router(
        bundle,
        GuardedCloud(HttpCloud(service.url, max_retries=0), breaker),
        **EDGE_ONLY | {"min_confidence": 1.0},
    )
    costs = router.settings.costs
    service.stop()
    for _ in range(2):
        assert {d.reason for d in router.route(texts[:2])} == {CLOUD_ERROR}
    assert breaker.state == "open"
    # Open: the cloud is not called at all, so the query costs only the edge.
    decisions = router.route(texts[:2])
    assert {d.reason for d in decisions} == {CLOUD_ERROR}
    assert all(d.cost == costs.edge for d in decisions)

    back = CloudService(service.cloud, port=service.port)
    try:
        now[0] = 29.0
        assert router.route(texts[:1])[0].reason == CLOUD_ERROR and back.requests == 0
        now[0] = 31.0  # half-open: one probe goes through, succeeds, and closes the circuit
        assert {d.route for d in router.route(texts[:2])} == {"cloud"}
        assert breaker.state == "closed" and back.requests == 1
    finally:
        back.stop()


def test_a_failed_probe_opens_the_breaker_again():
    now = [0.0]
    breaker = CircuitBreaker(failure_threshold=1, reset_after_s=10, clock=lambda: now[0])
    breaker.record(False)
    now[0] = 10.0
    assert breaker.allow() and not breaker.allow(), "half-open admits a single probe"
    breaker.record(False)
    assert breaker.state == "open"


def test_shadow_queries_measure_agreement_without_changing_answers(bundle, texts, local_cloud):
    router = make_router(bundle, local_cloud, **EDGE_ONLY | {"shadow_rate": 1.0})
    decisions = router.route(texts)
    assert all(d.shadow and d.route == "edge" and d.cloud_label is not None for d in decisions)
    assert [d.label for d in decisions] == router.edge.predict(texts)
    summary = summarize(decisions, router.settings.costs)
    expected = np.mean([d.edge_label == d.cloud_label for d in decisions])
    assert summary["shadow_agreement"] == pytest.approx(expected)


def test_the_shadow_sample_is_deterministic_and_near_its_rate():
    many = [f"message number {i}" for i in range(4000)]
    chosen = shadow_sample(many, 0.1)
    assert np.array_equal(chosen, shadow_sample(many, 0.1))
    assert 0.08 < chosen.mean() < 0.12
    assert not shadow_sample(many, 0.0).any()


def test_costs_add_up_and_project_to_a_month(bundle, texts, local_cloud):
    router = make_router(bundle, local_cloud)
    decisions = router.route(texts)
    costs = router.settings.costs
    on_cloud = sum(d.route == "cloud" for d in decisions)
    summary = summarize(decisions, costs)
    assert sum(d.cost for d in decisions) == pytest.approx(len(texts) * costs.edge + on_cloud * costs.cloud)
    assert summary["edge_share"] == pytest.approx(1 - on_cloud / len(texts))
    assert summary["savings_vs_cloud_only"] == pytest.approx(1 - summary["cost_per_query"] / costs.cloud)
    month = project(decisions, costs, 1_000_000)
    assert month["monthly_cost"] == pytest.approx(summary["cost_per_query"] * 1_000_000)
    assert month["monthly_savings"] == pytest.approx(month["monthly_cloud_only_cost"] - month["monthly_cost"])


def test_the_reference_complexity_score():
    text = "I am angry. This is terrible and I want a manager now please."
    score = complexity_score([text], np.array([0.5]), RouterSettings().keywords)[0]
    words_per_sentence = 13 / 2
    expected = 0.3 * len(text) / 200 + 0.3 * words_per_sentence / 15 + 0.2 * 1.0 + 0.2 * 1.0
    assert score == pytest.approx(expected)
    assert complexity_score([text], np.array([1.0]), ())[0] == pytest.approx(expected - 0.4)


def test_unfamiliar_share_counts_unknown_and_spelled_out_pieces():
    assert unfamiliar_share(["[CLS]", "refund", "please", "[SEP]", "[PAD]"]) == 0
    assert unfamiliar_share(["[CLS]", "z", "##q", "##x", "[UNK]", "[SEP]"]) == pytest.approx(3 / 4)


def test_router_settings_round_trip_and_refuse_nonsense(tmp_path):
    settings = RouterSettings(temperature=1.7, min_confidence=0.8, calibration={"target": "edge_share"})
    path = tmp_path / "router.json"
    path.write_text(settings.to_json())
    assert RouterSettings.load(path) == settings
    with pytest.raises(ValueError, match=re.escape("min_confidence must be within [0, 1] (got 1.5)")):
        RouterSettings(min_confidence=1.5)
    path.write_text(json.dumps({"temperature": 1.0, "treshold": 0.9}))
    with pytest.raises(ValueError, match=r"unknown field.*treshold"):
        RouterSettings.load(path)
