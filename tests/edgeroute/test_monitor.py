"""The monitor: DESIGN §1's health score, alerts at their thresholds, trends, cost estimate."""

from __future__ import annotations

import pytest

from edgeroute.config import Thresholds
from edgeroute.drift import Profile
from edgeroute.monitor import Monitor, Observation, health_score, status, trend
from edgeroute.router import Costs


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def observed(
    request_id: str,
    when: float,
    route: str = "edge",
    *,
    cost: float = 0.001,
    latency: float = 5.0,
    version: str = "m/1",
    length: int = 40,
    label: str = "positive",
) -> Observation:
    return Observation(
        request_id, when, version, route, label, cost, latency, 0.3, length, 0.0, 0.95, label
    )  # fmt: skip


def feed(monitor: Monitor, clock: Clock, n: int, *, edge: float, cost: float = 0.001, latency: float = 5.0):
    """``n`` requests, the first ``edge`` share on the edge, one second apart."""
    for i in range(n):
        clock.now += 1
        route = "edge" if i < round(edge * n) else "cloud"
        monitor.record(observed(f"r{clock.now}", clock.now, route, cost=cost, latency=latency))


@pytest.mark.parametrize(
    ("edge_share", "accuracy", "alerts", "score", "name"),
    [
        (0.95, 0.95, 0, 100, "excellent"),
        (0.85, 0.95, 0, 90, "excellent"),
        (0.75, 0.95, 1, 65, "fair"),
        (0.95, 0.85, 0, 85, "good"),
        (0.95, 0.75, 1, 50, "poor"),
        (0.5, 0.5, 9, 0, "critical"),
        (None, None, 0, 100, "excellent"),
    ],
)
def test_the_health_score_and_status_follow_the_reference(edge_share, accuracy, alerts, score, name):
    assert health_score(edge_share, accuracy, alerts) == score
    assert status(score) == name


def test_alerts_fire_at_their_thresholds_and_not_before():
    clock = Clock()
    monitor = Monitor(Thresholds(window_s=600), Costs(), clock)
    feed(monitor, clock, 100, edge=0.80)
    assert monitor.report()["alerts"] == []
    feed(monitor, clock, 100, edge=0.70)  # the window now holds 75 % edge
    report = monitor.report()
    assert report["alerts"] == ["edge_share 0.75 below 0.8"]
    assert report["score"] == 100 - 10 - 20 - 5 and report["status"] == "fair"

    slow = Monitor(Thresholds(max_p95_latency_ms=100, max_cost_per_query=0.005), Costs(), clock)
    feed(slow, clock, 50, edge=1.0, cost=0.006, latency=120)
    assert set(slow.report()["alerts"]) == {
        "cost_per_query 0.006 above 0.005",
        "p95_latency_ms 120 above 100",
    }


def test_feedback_gives_accuracy_and_its_alert():
    clock = Clock()
    monitor = Monitor(Thresholds(), Costs(), clock)
    for i in range(20):
        clock.now += 1
        monitor.record(observed(f"r{i}", clock.now))
    assert monitor.report()["metrics"]["accuracy"] is None
    for i in range(20):
        assert monitor.feedback(f"r{i}", "positive" if i < 16 else "negative", "helpdesk") == (i < 16)
    report = monitor.report()
    assert report["metrics"]["accuracy"] == 0.8 and report["metrics"]["labelled"] == 20
    assert report["alerts"] == ["accuracy 0.8 below 0.85"]
    assert report["score"] == 100 - 15 - 5
    assert monitor.feedback("unknown", "positive", "helpdesk") is None
    assert any("retrain" in advice for advice in report["recommendations"])


def test_old_requests_leave_the_window():
    clock = Clock()
    monitor = Monitor(Thresholds(window_s=100), Costs(), clock)
    feed(monitor, clock, 50, edge=0.0)
    clock.now += 200
    feed(monitor, clock, 10, edge=1.0)
    assert monitor.report()["metrics"]["requests"] == 10
    assert monitor.report()["metrics"]["edge_share"] == 1.0


def test_trends_come_from_a_linear_fit():
    assert trend([0.80, 0.82, 0.85, 0.88, 0.90], 1, 0.01) == "improving"
    assert trend([0.80, 0.82, 0.85, 0.88, 0.90], -1, 0.01) == "declining"
    assert trend([0.85, 0.85, 0.851, 0.85], 1, 0.01) == "stable"
    assert trend([0.85, None, 0.9], 1, 0.01) == "unknown"
    clock = Clock()
    monitor = Monitor(Thresholds(window_s=600, trend_buckets=6), Costs(), clock)
    for share in (1.0, 0.9, 0.8, 0.7, 0.6, 0.5):
        feed(monitor, clock, 100, edge=share)
    assert monitor.report()["trends"]["edge_share"] == "declining"


def test_the_cost_estimate_extrapolates_the_request_rate_to_a_month():
    clock = Clock()
    monitor = Monitor(Thresholds(window_s=3600), Costs(edge=0.001, cloud=0.0136), clock)
    feed(monitor, clock, 3600, edge=1.0)  # one request a second for an hour
    estimate = monitor.report()["cost_estimate"]
    assert estimate["requests_per_day"] == pytest.approx(86_400, rel=0.01)
    assert estimate["monthly_cost"] == pytest.approx(0.001 * 86_400 * 30, rel=0.01)
    assert estimate["monthly_cloud_only_cost"] == pytest.approx(0.0136 * 86_400 * 30, rel=0.01)


def test_the_monitor_keeps_at_most_max_events():
    clock = Clock()
    monitor = Monitor(Thresholds(max_events=5), Costs(), clock)
    for i in range(10):
        monitor.record(observed(f"r{i}", clock.now))
    assert monitor.report()["metrics"]["requests"] == 5
    assert monitor.feedback("r0", "positive", "helpdesk") is None
    assert monitor.feedback("r9", "positive", "helpdesk") is True


def test_the_report_splits_by_version_and_judges_drift_on_the_champions_traffic():
    clock = Clock()
    monitor = Monitor(Thresholds(min_drift_samples=50), Costs(), clock)
    reference = {"length": [20.0, 40.0, 60.0, 80.0] * 25, "unfamiliar_share": [0.0] * 100,
                 "edge_confidence": [0.95] * 100}  # fmt: skip
    monitor.serve("m/1", Profile.build(reference, ["positive"] * 100, ["negative", "positive"]))
    for i in range(60):
        clock.now += 1
        monitor.record(observed(f"a{i}", clock.now, length=(20, 40, 60, 80)[i % 4]))
        monitor.record(observed(f"b{i}", clock.now, "cloud", version="m/2", length=900))
    report = monitor.report()
    assert report["versions"]["m/1"]["requests"] == report["versions"]["m/2"]["requests"] == 60
    assert report["versions"]["m/1"]["edge_share"] == 1.0 and report["versions"]["m/2"]["edge_share"] == 0.0
    assert report["drift"]["samples"] == 60, "the canary's traffic is not the champion's profile's"
    assert report["drift"]["max_psi"] < 0.05 and not any(a.startswith("drift") for a in report["alerts"])
    for i in range(120):  # the champion's messages get much longer
        clock.now += 1
        monitor.record(observed(f"c{i}", clock.now, length=900))
    report = monitor.report()
    assert report["drift"]["features"]["length"] > 0.25
    assert f"drift psi {report['drift']['features']['length']:.3g} above 0.25 (length)" in report["alerts"]
    assert any("drifted" in advice for advice in report["recommendations"])
