"""Live health of the router: rolling metrics, alerts, a health score, trends, recommendations.

Every routed request is recorded with its time, the model version that answered, route, cost,
latency, complexity and the inputs drift is measured on; feedback (the true label of a request)
adds accuracy. `Monitor.report()` computes, over the rolling window, the metrics of DESIGN §1
(overall and per model version: a canary serves two), input drift against the served model's
reference profile (`edgeroute.drift`), the alerts that fire at their thresholds, the health
score and its status, a trend per metric (linear fit over equal time buckets of the window) and
plain-language recommendations. `Monitor.restore` refills the window from the audit trail, so a
restart does not reset it.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import numpy as np

from edgeroute.access import UNNAMED
from edgeroute.config import Thresholds
from edgeroute.drift import NUMERIC, Profile
from edgeroute.router import Costs

DAYS_PER_MONTH = 30


@dataclass
class Observation:
    """One routed request as the monitor keeps it (and the audit trail stores it, text aside)."""

    request_id: str
    time: float
    model_version: str
    route: str
    label: str
    cost: float
    latency_ms: float | None  # None: restored from a trail written before it was kept
    complexity: float
    length: int | None
    unfamiliar_share: float | None
    edge_confidence: float | None
    edge_label: str | None
    correct: bool | None = None
    feedback_source: str | None = None  # who gave the feedback (`edgeroute.access`)

    @classmethod
    def from_audit(cls, row: dict[str, Any]) -> Observation:
        """A decision as `edgeroute.audit.AuditLog.recent` reads it back, its feedback judged."""
        names = cls.__dataclass_fields__.keys() - {"length", "correct", "feedback_source"}
        true_label = row["true_label"]
        return cls(
            **{name: row[name] for name in names},
            length=row["text_chars"],
            correct=None if true_label is None else row["label"] == true_label,
            feedback_source=None if true_label is None else row["feedback_source"] or UNNAMED,
        )

    @property
    def edge(self) -> bool:
        return self.route == "edge"


# Direction in which each metric gets better, for trends.
_BETTER_WHEN = {"edge_share": 1, "accuracy": 1, "cost_per_query": -1, "p95_latency_ms": -1}


def health_score(edge_share: float | None, accuracy: float | None, alerts: int) -> int:
    """DESIGN §1: 100, less for a low edge share and low accuracy, less 5 per alert (at most 30).

    A metric with no data (no traffic, no feedback) costs nothing.
    """
    score = 100
    if edge_share is not None and edge_share < 0.9:
        score -= 10
    if edge_share is not None and edge_share < 0.8:
        score -= 20
    if accuracy is not None and accuracy < 0.9:
        score -= 15
    if accuracy is not None and accuracy < 0.8:
        score -= 30
    score -= min(5 * alerts, 30)
    return max(score, 0)


def status(score: int) -> str:
    for floor, name in ((90, "excellent"), (75, "good"), (60, "fair"), (40, "poor")):
        if score >= floor:
            return name
    return "critical"


def trend(values: Iterable[float | None], better_when: int, tolerance: float) -> str:
    """improving / stable / declining from the slope of a linear fit; "unknown" with < 3 points."""
    points = [(i, v) for i, v in enumerate(values) if v is not None]
    if len(points) < 3:
        return "unknown"
    x, y = np.array(points, dtype=float).T
    slope = float(np.polyfit(x, y, 1)[0]) * better_when
    if abs(slope) <= tolerance * max(abs(float(np.mean(y))), 1e-12):
        return "stable"
    return "improving" if slope > 0 else "declining"


def _metrics(events: list[Observation]) -> dict[str, float | None]:
    if not events:
        return {"requests": 0, "edge_share": None, "cost_per_query": None, "p95_latency_ms": None,
                "avg_complexity": None, "accuracy": None, "labelled": 0, "feedback_sources": {}}  # fmt: skip
    labelled = [e.correct for e in events if e.correct is not None]
    sources = Counter(e.feedback_source for e in events if e.correct is not None)
    timed = [e.latency_ms for e in events if e.latency_ms is not None]
    return {
        "requests": len(events),
        "edge_share": sum(e.edge for e in events) / len(events),
        "cost_per_query": sum(e.cost for e in events) / len(events),
        "p95_latency_ms": float(np.percentile(timed, 95)) if timed else None,
        "avg_complexity": sum(e.complexity for e in events) / len(events),
        "accuracy": sum(labelled) / len(labelled) if labelled else None,
        "labelled": len(labelled),
        "feedback_sources": dict(sorted(sources.items())),
    }


class Monitor:
    """Thread-safe rolling record of routed requests and their feedback."""

    def __init__(
        self,
        thresholds: Thresholds | None = None,
        costs: Costs | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.thresholds = thresholds or Thresholds()
        self.costs = costs or Costs()
        self.clock = clock
        self.started = clock()
        self._events: deque[Observation] = deque(maxlen=self.thresholds.max_events)
        self._by_request: dict[str, Observation] = {}
        self._lock = threading.Lock()
        self.served: tuple[str, Profile | None] = ("", None)

    def serve(self, version: str, profile: Profile | None) -> None:
        """The version now served (the champion) and its reference profile: drift is its traffic's."""
        self.served = (version, profile)

    def record(self, observation: Observation) -> None:
        with self._lock:
            if len(self._events) == self._events.maxlen:
                self._by_request.pop(self._events[0].request_id, None)
            self._events.append(observation)
            self._by_request[observation.request_id] = observation

    def restore(self, observations: Iterable[Observation]) -> int:
        """Refill the window with earlier observations (oldest first): how many were in it."""
        start = self.clock() - self.thresholds.window_s
        kept = [o for o in observations if o.time >= start]
        for observation in kept:
            self.record(observation)
        if kept:
            self.started = min(self.started, kept[0].time)
        return len(kept)

    def feedback(self, request_id: str, true_label: str, source: str) -> bool | None:
        """Mark a request right or wrong, by the feedback ``source`` (the first one kept, as the
        trail keeps it); None when the request is unknown (or left the window)."""
        with self._lock:
            known = self._by_request.get(request_id)
            if known is None:
                return None
            known.feedback_source = known.feedback_source or source
            known.correct = known.label == true_label
            return known.correct

    def _window(self, now: float) -> list[Observation]:
        start = now - self.thresholds.window_s
        return [e for e in self._events if e.time >= start]

    def drift(self, events: list[Observation]) -> dict[str, Any] | None:
        """PSI of the served version's traffic in the window against its profile; None without a
        profile, or with fewer than ``min_drift_samples`` requests to judge by."""
        version, profile = self.served
        if profile is None:
            return None
        own = [e for e in events if e.model_version == version and e.edge_label is not None]
        if len(own) < self.thresholds.min_drift_samples:
            return None
        values = {name: [getattr(e, name) for e in own] for name in NUMERIC}
        features = profile.drift(values, [e.edge_label for e in own])
        return {
            "method": "psi",
            "features": {name: round(value, 4) for name, value in features.items()},
            "max_psi": round(max(features.values()), 4),
            "threshold": self.thresholds.max_drift_psi,
            "samples": len(own),
        }

    def report(self, extra_alerts: Iterable[str] = ()) -> dict[str, Any]:
        """The health report: metrics, alerts, score, status, trends, recommendations, cost."""
        settings = self.thresholds
        now = self.clock()
        with self._lock:
            events = self._window(now)
        metrics = _metrics(events)
        drift = self.drift(events)
        alerts = [*self._alerts(metrics), *drift_alerts(drift), *extra_alerts]
        score = health_score(metrics["edge_share"], metrics["accuracy"], len(alerts))
        span = max(min(now - self.started, settings.window_s), 1e-9)
        rate_per_day = len(events) / span * 86_400
        monthly_requests = rate_per_day * DAYS_PER_MONTH
        return {
            "score": score,
            "status": status(score),
            "window_s": settings.window_s,
            "metrics": metrics,
            "versions": {
                version: _metrics([e for e in events if e.model_version == version])
                for version in sorted({e.model_version for e in events})
            },
            "drift": drift,
            "alerts": alerts,
            "trends": self._trends(events, now),
            "recommendations": recommendations(metrics, alerts),
            "cost_estimate": {
                "requests_per_day": rate_per_day,
                "monthly_cost": (metrics["cost_per_query"] or 0.0) * monthly_requests,
                "monthly_cloud_only_cost": self.costs.cloud * monthly_requests,
            },
            "thresholds": settings.model_dump(),
        }

    def _alerts(self, metrics: dict[str, Any]) -> list[str]:
        t = self.thresholds
        checks = (
            ("edge_share", metrics["edge_share"], t.min_edge_share, True),
            ("accuracy", metrics["accuracy"], t.min_accuracy, True),
            ("cost_per_query", metrics["cost_per_query"], t.max_cost_per_query, False),
            ("p95_latency_ms", metrics["p95_latency_ms"], t.max_p95_latency_ms, False),
        )
        alerts = []
        for name, value, limit, at_least in checks:
            if value is not None and (value < limit if at_least else value > limit):
                alerts.append(f"{name} {value:.4g} {'below' if at_least else 'above'} {limit:g}")
        return alerts

    def _trends(self, events: list[Observation], now: float) -> dict[str, str]:
        buckets = self.thresholds.trend_buckets
        start = now - self.thresholds.window_s
        edges = np.linspace(start, now, buckets + 1)
        per_bucket = [_metrics([e for e in events if lo <= e.time < hi]) for lo, hi in pairwise(edges)]
        return {
            name: trend((m[name] for m in per_bucket), better, self.thresholds.trend_tolerance)
            for name, better in _BETTER_WHEN.items()
        }


def drift_alerts(drift: dict[str, Any] | None) -> list[str]:
    """``drift psi … above …`` for each feature past the threshold."""
    if drift is None:
        return []
    return [
        f"drift psi {value:.3g} above {drift['threshold']:g} ({name})"
        for name, value in drift["features"].items()
        if value > drift["threshold"]
    ]


def recommendations(metrics: dict[str, Any], alerts: list[str]) -> list[str]:
    """Plain-language next steps for what the metrics show."""
    advice = []
    if metrics["requests"] == 0:
        return ["No traffic in the window yet: nothing to judge."]
    if metrics["edge_share"] is not None and metrics["edge_share"] < 0.9:
        advice.append(
            "Fewer queries than expected stay on the edge: recalibrate the router on recent data "
            "(the recalibrate-router deployment), or retrain if the traffic has drifted."
        )
    if metrics["accuracy"] is not None and metrics["accuracy"] < 0.9:
        advice.append(
            "Accuracy from feedback is low: retrain on what production saw "
            "(training-pipeline/retrain-from-production) and check for new topics or labels."
        )
    if any(a.startswith("drift") for a in alerts):
        advice.append(
            "The inputs have drifted from what the model was trained on: retrain on what production "
            "saw (training-pipeline/retrain-from-production), or label a sample of recent messages."
        )
    if any(a.startswith("cost_per_query") for a in alerts):
        advice.append("Cost per query is high: too many escalations; raise the edge share target.")
    if any(a.startswith("p95_latency_ms") for a in alerts):
        advice.append("Latency is high: check the cloud tier and the box's CPU; add edge replicas.")
    if metrics["labelled"] == 0:
        advice.append("No feedback in the window: send true labels to /v1/feedback to measure accuracy.")
    return advice or ["All metrics within thresholds: nothing to do."]


def fleet_report(
    rows: Iterable[dict[str, Any]],
    thresholds: Thresholds | None = None,
    costs: Costs | None = None,
    champion: str | None = None,
    profile: Profile | None = None,
    clock: Callable[[], float] = time.time,
) -> dict[str, Any]:
    """The health report of every service that writes one audit trail (``rows``: its window, as
    `edgeroute.trails.window` reads it): `Monitor.report` over the union of their decisions, one
    model version at a time, plus ``instances``, each service's own window metrics.

    ``champion`` is the version served as champion (None: the one that answered most); the
    version that answered most after it is taken for the canary. Drift is the champion's traffic
    against ``profile``, its bundle's reference profile (None: not judged; a trail holds none).
    """
    monitor = Monitor(thresholds, costs, clock)
    observed = [(row["instance"], Observation.from_audit(row)) for row in rows]
    monitor.restore(observation for _, observation in observed)
    start = clock() - monitor.thresholds.window_s
    by_instance: dict[str, list[Observation]] = {}
    for instance, observation in observed:
        if observation.time >= start:
            by_instance.setdefault(instance, []).append(observation)
    answered = Counter(o.model_version for events in by_instance.values() for o in events).most_common()
    champion = champion or (answered[0][0] if answered else "")
    monitor.serve(champion, profile)
    report = monitor.report()
    others = [v for v, _ in answered if v != champion]
    requests = report["metrics"]["requests"]
    canary = (
        {"model_version": others[0], "share": report["versions"][others[0]]["requests"] / requests}
        if others
        else None
    )
    return report | {
        "model_version": champion,
        "canary": canary,
        "instances": {name: _metrics(events) for name, events in sorted(by_instance.items())},
    }
