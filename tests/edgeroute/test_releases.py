"""Serving the champion: a canary on a share of the requests, versions swapped in under load,
input drift against the bundle's profile, and a health window that survives a restart; all on
a real uvicorn server on 127.0.0.1."""

from __future__ import annotations

import json
import math
import shutil
import threading
import time
from pathlib import Path

import httpx
import pytest

from edgeroute.audit import AuditLog
from edgeroute.bundle import BundleError, load_bundle
from edgeroute.cloud import CircuitBreaker
from edgeroute.config import load_serve_config
from edgeroute.drift import Profile
from edgeroute.monitor import Monitor
from edgeroute.releases import Follower, Releases, canary_bucket, open_release
from edgeroute.server import create_app
from edgeroute.service import RouterService
from tasks.support.synthetic import generate
from tests.conftest import PROFILE_SEED
from tests.services import Service, edge_service, wrong_label

CONFIG = load_serve_config(None, ["limits.max_batch=512"])


def release(bundle: Path, version: str):
    return open_release(bundle, version, CONFIG, CircuitBreaker(), lazy=False)


def serve(releases: Releases, tmp_path: Path, followers=(), *settings: str):
    config = load_serve_config(None, ["limits.max_batch=512", *settings])
    audit = AuditLog(tmp_path / "audit.db")
    monitor = Monitor(config.monitor, releases.champion.router.settings.costs)
    return Service(create_app(RouterService(releases, audit, monitor, config, followers))), audit


def classify(url: str, texts: list[str]) -> list[dict]:
    response = httpx.post(f"{url}/v1/classify", json={"texts": texts}, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()["results"]


def test_the_canary_share_is_chosen_by_a_hash_of_the_request_id(tiny_bundle, escalating_bundle):
    releases = Releases(release(tiny_bundle, "m/1"), release(escalating_bundle, "m/2"), canary_share=0.1)
    ids = [f"request-{i}" for i in range(20_000)]
    picked = releases.pick(ids)
    assert picked == releases.pick(ids), "the same request always goes the same way"
    share = sum(r.version == "m/2" for r in picked) / len(ids)
    assert abs(share - 0.1) < 4 * math.sqrt(0.1 * 0.9 / len(ids))
    assert all((canary_bucket(i) < 0.1) == (r.version == "m/2") for i, r in zip(ids, picked, strict=True))
    assert {r.version for r in Releases(releases.champion).pick(ids)} == {"m/1"}


def test_a_canary_answers_its_share_with_split_metrics_health_and_feedback(
    tiny_bundle, escalating_bundle, tmp_path
):
    releases = Releases(release(tiny_bundle, "m/1"), release(escalating_bundle, "m/2"), canary_share=0.1)
    service, audit = serve(releases, tmp_path)
    try:
        texts = [row["text"] for row in generate(1000, seed=3)]
        results = [
            r for start in range(0, 1000, 250) for r in classify(service.url, texts[start : start + 250])
        ]
        canary = [r for r in results if r["model_version"] == "m/2"]
        # Binomial noise: 100 expected, sd 9.5; the bounds are 4 sd.
        assert 62 <= len(canary) <= 138
        assert {r["route"] for r in canary} == {"cloud"}, "the canary's router escalates everything"
        for r in canary[:20]:
            httpx.post(
                f"{service.url}/v1/feedback", json={"request_id": r["request_id"], "label": r["label"]}
            )
        health = httpx.get(f"{service.url}/v1/health").json()
        assert health["model_version"] == "m/1" and health["canary"] == {"model_version": "m/2", "share": 0.1}
        assert health["versions"]["m/2"]["requests"] == len(canary)
        assert health["versions"]["m/1"]["requests"] == 1000 - len(canary)
        assert health["versions"]["m/2"]["labelled"] == 20 and health["versions"]["m/2"]["accuracy"] == 1.0
        assert health["versions"]["m/1"]["labelled"] == 0
        metrics = httpx.get(f"{service.url}/metrics").text
        escalated = 'edgeroute_decisions_total{model_version="m/2",reason="low_confidence",route="cloud"}'
        assert f"{escalated} {len(canary)}.0" in metrics
        assert 'edgeroute_feedback_total{correct="true",model_version="m/2"} 20.0' in metrics
        assert 'edgeroute_model_info{slot="canary",version="m/2"} 1.0' in metrics
        assert httpx.get(f"{service.url}/readyz").json()["canary"]["model_version"] == "m/2"
    finally:
        service.stop()
        audit.close()


class Registry:
    """What a follower asks of a registry, kept in memory: which version an alias names, and
    each version's bundle directory."""

    def __init__(self, versions: dict[str, Path], current: str) -> None:
        self.versions, self.current = versions, current
        self.lookups = 0

    def lookup(self, uri: str) -> str:
        self.lookups += 1
        return self.current

    def fetch(self, uri: str) -> Path:
        return self.versions[uri.removeprefix("models:/")]

    def follower(self, releases: Releases, refresh_s: float) -> Follower:
        """A follower of the champion alias, loading versions as the service does."""
        return Follower(
            "models:/m@champion", "champion", releases, refresh_s=refresh_s, lookup=self.lookup,
            fetch=self.fetch, build=lambda path, version: release(path, version),
        )  # fmt: skip


def test_a_promotion_and_a_rollback_under_load_fail_no_request(tiny_bundle, escalating_bundle, tmp_path):
    registry = Registry({"m/1": tiny_bundle, "m/2": escalating_bundle}, "m/1")
    releases = Releases(release(tiny_bundle, "m/1"))
    follower = registry.follower(releases, refresh_s=0.2)
    service, audit = serve(releases, tmp_path, (follower,))
    answers: list[tuple[int, str]] = []
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(timeout=30) as client:
            while not stop.is_set():
                response = client.post(f"{service.url}/v1/classify", json={"text": "where is my parcel?"})
                version = (
                    response.json()["results"][0]["model_version"] if response.status_code == 200 else ""
                )
                answers.append((response.status_code, version))

    def ready_version() -> str:
        return httpx.get(f"{service.url}/readyz").json()["model_version"]

    clients = [threading.Thread(target=load) for _ in range(4)]
    try:
        for client in clients:
            client.start()
        time.sleep(0.5)
        for version in ("m/2", "m/1"):
            registry.current = version
            deadline = time.monotonic() + 30
            while ready_version() != version and time.monotonic() < deadline:
                time.sleep(0.05)
            assert ready_version() == version
            time.sleep(0.5)
        metrics = httpx.get(f"{service.url}/metrics").text
    finally:
        stop.set()
        for client in clients:
            client.join()
        service.stop()
        audit.close()
    assert answers and {status for status, _ in answers} == {200}
    versions = [version for _, version in answers]
    assert {"m/1", "m/2"} <= set(versions)
    assert 'edgeroute_model_info{slot="champion",version="m/1"} 1.0' in metrics
    assert 'slot="champion",version="m/2"' not in metrics, "the version swapped out is no longer shown"


def test_a_version_that_fails_to_verify_is_skipped_and_the_old_one_keeps_serving(
    tiny_bundle, escalating_bundle, tmp_path, caplog
):
    altered = shutil.copytree(escalating_bundle, tmp_path / "altered")
    (altered / "router.json").write_text((altered / "router.json").read_text().replace("0.", "0.0", 1))
    with pytest.raises(BundleError):
        load_bundle(altered)
    registry = Registry({"m/1": tiny_bundle, "m/2": altered}, "m/2")
    releases = Releases(release(tiny_bundle, "m/1"))
    follower = registry.follower(releases, refresh_s=60)
    assert follower.check() is None and follower.check() is None
    assert releases.champion.version == "m/1" and follower.refused == "m/2"
    assert "version m/2 refused" in caplog.text and "still serving m/1" in caplog.text
    registry.current = "m/1"
    assert follower.check() is None, "back on the version served: nothing to swap"


def test_a_refused_version_is_tried_again_once_the_alias_moves_away_and_back(
    tiny_bundle, escalating_bundle, tmp_path
):
    broken = shutil.copytree(escalating_bundle, tmp_path / "m2")
    (broken / "router.json").write_text((broken / "router.json").read_text().replace("0.", "0.0", 1))
    registry = Registry({"m/1": tiny_bundle, "m/2": broken, "m/3": tiny_bundle}, "m/2")
    releases = Releases(release(tiny_bundle, "m/1"))
    follower = registry.follower(releases, refresh_s=60)
    assert follower.check() is None and releases.champion.version == "m/1"
    shutil.rmtree(broken)
    shutil.copytree(escalating_bundle, broken)  # the artifacts fixed
    registry.current = "m/3"
    assert follower.check() == "m/3"
    registry.current = "m/2"
    assert follower.check() == "m/2" and releases.champion.version == "m/2"


def drifted(texts: list[str]) -> list[str]:
    return [f"{text} {text} {text}" for text in texts]


def test_input_drift_alerts_on_a_shifted_input_set_and_not_on_the_same_distribution(tiny_bundle, tmp_path):
    assert load_bundle(tiny_bundle).profile() is not None
    messages = [row["text"] for row in generate(1000, seed=PROFILE_SEED + 1)]
    for name, texts, alerted in (("same", messages[:500], False), ("shifted", drifted(messages[500:]), True)):
        service, audit = edge_service(
            tiny_bundle, tmp_path / name, None, None, "limits.max_batch=500", "monitor.min_drift_samples=300"
        )
        try:
            classify(service.url, texts)
            health = httpx.get(f"{service.url}/v1/health").json()
            metrics = httpx.get(f"{service.url}/metrics").text
        finally:
            service.stop()
            audit.close()
        drift = health["drift"]
        assert drift["method"] == "psi" and drift["samples"] == 500
        assert any(a.startswith("drift psi") for a in health["alerts"]) is alerted, (name, drift)
        assert (drift["max_psi"] > 0.25) is alerted
        assert 'edgeroute_input_drift_psi{feature="length"}' in metrics
    assert drift["features"]["length"] > 1.0, "three times as long: far off the reference"


def test_too_few_requests_or_no_profile_report_no_drift():
    profile = Profile.build(
        {"length": [10.0, 20.0] * 50, "unfamiliar_share": [0.0] * 100, "edge_confidence": [0.9] * 100},
        ["a"] * 100, ["a", "b"],
    )  # fmt: skip
    monitor = Monitor()
    assert monitor.report()["drift"] is None
    monitor.serve("m/1", profile)
    assert monitor.report()["drift"] is None, "no traffic yet"


def test_the_health_window_is_rebuilt_from_the_audit_trail_after_a_restart(tiny_bundle, tmp_path):
    texts = [row["text"] for row in generate(30, seed=11)]
    service, audit = edge_service(tiny_bundle, tmp_path)
    try:
        results = classify(service.url, texts)
        for r in results[:10]:
            wrong = {"request_id": r["request_id"], "label": wrong_label(r["label"])}
            httpx.post(f"{service.url}/v1/feedback", json=wrong)
        before = httpx.get(f"{service.url}/v1/health").json()
    finally:
        service.stop()
        audit.close()
    old = AuditLog(tmp_path / "audit.db")
    row = {"request_id": "from-yesterday", "time": time.time() - 86_400, "model_version": "test/0",
           "route": "edge", "reason": "optimal_edge", "label": "neutral", "confidence": 0.9,
           "complexity": 0.1, "cost": 0.001, "text": "long ago"}  # fmt: skip
    old.record([row])
    old.close()

    service, audit = edge_service(tiny_bundle, tmp_path)
    try:
        after = httpx.get(f"{service.url}/v1/health").json()
        late = httpx.post(
            f"{service.url}/v1/feedback",
            json={"request_id": results[10]["request_id"], "label": results[10]["label"]},
        ).json()
    finally:
        service.stop()
        audit.close()
    assert after["metrics"]["requests"] == 30, "the decision of a day ago is outside the window"
    assert after["metrics"]["accuracy"] == before["metrics"]["accuracy"] == 0.0
    assert after["metrics"]["labelled"] == 10 and "accuracy 0 below 0.85" in after["alerts"]
    assert after["metrics"]["p95_latency_ms"] == pytest.approx(before["metrics"]["p95_latency_ms"])
    assert after["metrics"]["feedback_sources"] == {"address 127.0.0.1": 10}, "who gave it, from the trail"
    assert late == {"request_id": results[10]["request_id"], "source": "address 127.0.0.1", "correct": True,
                    "recorded": True}  # fmt: skip


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda p: p["shares"].update(label=[1.0]), "shares.label must be 3 shares"),
        (lambda p: p["edges"].update(length=[5, 1]), "edges.length must be in increasing order"),
        (lambda p: p.update(samples=0), "samples must be a positive integer"),
        (lambda p: p.pop("labels"), "exactly the fields"),
    ],
)
def test_a_bad_profile_is_refused_naming_its_field(tiny_bundle, change, message):
    profile = load_bundle(tiny_bundle).profile()
    values = json.loads(profile.to_json())
    assert Profile.from_dict(values) == profile
    change(values)
    with pytest.raises(ValueError, match=message):
        Profile.from_dict(values)


def test_an_in_process_cloud_answers_a_micro_batchs_escalations_in_the_edges_own_call(escalating_bundle):
    # A remote cloud's calls wait on threads of their own; the bundle's own model computes on the
    # same cores and cannot hang on a network, so it answers in the edge's (batched) call.
    texts = [f"my parcel {i} never came and nobody answers" for i in range(6)]
    local = release(escalating_bundle, "m/1")
    assert local.escalating is None
    decided = local.decide_on_edge(texts)
    assert {d.route for d in decided} == {"cloud"} and all(d.cloud_label for d in decided)
    remote_config = load_serve_config(None, ["cloud.url=http://127.0.0.1:9", "limits.max_batch=512"])
    remote = open_release(escalating_bundle, "m/2", remote_config, CircuitBreaker(), lazy=False)
    assert remote.escalating is remote.tier
    pending = remote.decide_on_edge(texts)
    assert {d.route for d in pending} == {"edge"} and remote.escalating.to_cloud(pending) == list(range(6))
