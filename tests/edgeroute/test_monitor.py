"""The monitor: DESIGN §1's health score, alerts at their thresholds, trends, cost estimate."""

from __future__ import annotations

import pytest

from edgeroute.config import Thresholds
from edgeroute.monitor import Monitor, health_score, status, trend
from edgeroute.router import Costs


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def feed(monitor: Monitor, clock: Clock, n: int, *, edge: float, cost: float = 0.001, latency: float = 5.0):
    """``n`` requests, the first ``edge`` share on the edge, one second apart."""
    for i in range(n):
        clock.now += 1
        on_edge = i < round(edge * n)
        monitor.record(f"r{clock.now}", "edge" if on_edge else "cloud", cost, latency, 0.3, "positive")


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
        monitor.record(f"r{i}", "edge", 0.001, 3.0, 0.2, "positive")
    assert monitor.report()["metrics"]["accuracy"] is None
    for i in range(20):
        assert monitor.feedback(f"r{i}", "positive" if i < 16 else "negative") == (i < 16)
    report = monitor.report()
    assert report["metrics"]["accuracy"] == 0.8 and report["metrics"]["labelled"] == 20
    assert report["alerts"] == ["accuracy 0.8 below 0.85"]
    assert report["score"] == 100 - 15 - 5
    assert monitor.feedback("unknown", "positive") is None
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
    monitor = Monitor(Thresholds(max_events=5), Costs(), Clock())
    for i in range(10):
        monitor.record(f"r{i}", "edge", 0.001, 1.0, 0.1, "positive")
    assert monitor.report()["metrics"]["requests"] == 5
    assert monitor.feedback("r0", "positive") is None
    assert monitor.feedback("r9", "positive") is True
