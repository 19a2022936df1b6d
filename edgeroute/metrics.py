"""The service's Prometheus metrics (`GET /metrics`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Enum,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)

from edgeroute.cloud import GuardedCloud

if TYPE_CHECKING:
    from edgeroute.releases import Release

BREAKER_STATES = ("closed", "half_open", "open")


class Metrics:
    """The service's Prometheus metrics, in a registry of its own, with the process collectors."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self._counted()
        self._gauged()

    def _counted(self) -> None:
        """What the requests add up to: counters and histograms."""
        self.decisions = Counter(
            "edgeroute_decisions",
            "Routed queries by the model version that answered, route and reason.",
            ["model_version", "route", "reason"],
            registry=self.registry,
        )
        self.cost = Counter(
            "edgeroute_cost_dollars", "Dollars spent on routed queries.", registry=self.registry
        )
        self.cloud_errors = Counter(
            "edgeroute_cloud_errors",
            "Escalations answered on the edge because the cloud failed.",
            registry=self.registry,
        )
        self.latency = Histogram(
            "edgeroute_request_duration_seconds",
            "Time to answer a classify request.",
            buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5),
            registry=self.registry,
        )
        self.cloud_latency = Histogram(
            "edgeroute_cloud_request_duration_seconds",
            "Time of one call to the cloud tier, by outcome (answered, failed).",
            ["outcome"],
            buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30),
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "edgeroute_batch_texts",
            "Texts per model call (micro-batches of concurrent requests).",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=self.registry,
        )
        self.feedback = Counter(
            "edgeroute_feedback",
            "Feedback received, by the model version that answered and whether it was right.",
            ["model_version", "correct"],
            registry=self.registry,
        )

    def _gauged(self) -> None:
        """What the service is now: gauges and states."""
        self.edge_share = Gauge(
            "edgeroute_edge_share_ratio",
            "Share of the monitor's window answered on the edge, by model version.",
            ["model_version"],
            registry=self.registry,
        )
        self.accuracy = Gauge(
            "edgeroute_feedback_accuracy_ratio",
            "Accuracy from feedback over the monitor's window, by model version.",
            ["model_version"],
            registry=self.registry,
        )
        self.drift = Gauge(
            "edgeroute_input_drift_psi",
            "Population stability index of each input feature against the champion's profile.",
            ["feature"],
            registry=self.registry,
        )
        self.breaker = Enum(
            "edgeroute_cloud_breaker_state", "The cloud circuit's state.", states=list(BREAKER_STATES),
            registry=self.registry,
        )  # fmt: skip
        self.spooled = Gauge(
            "edgeroute_audit_spooled_rows",
            "Rows waiting in the local spool for the Postgres audit trail to come back.",
            registry=self.registry,
        )
        self.dropped = Gauge(
            "edgeroute_audit_dropped_rows",
            "Spooled rows dropped past the spool's bound since start (audit.on_full=drop_oldest).",
            registry=self.registry,
        )
        self.model_info = Gauge(
            "edgeroute_model_info",
            "1 for each model version the service answers with, by slot (champion, canary).",
            ["slot", "version"],
            registry=self.registry,
        )

    def show(self, report: dict[str, Any]) -> None:
        """The window's figures of a health report as gauges (a version gone from it is dropped)."""
        for gauge, name in ((self.edge_share, "edge_share"), (self.accuracy, "accuracy")):
            gauge.clear()
            for version, figures in report["versions"].items():
                if figures[name] is not None:
                    gauge.labels(version).set(figures[name])
        self.drift.clear()
        for feature, value in (report["drift"] or {}).get("features", {}).items():
            self.drift.labels(feature).set(value)

    def timed(self, release: Release) -> None:
        """Cloud calls of ``release`` observed in the cloud latency histogram."""
        if isinstance(release.router.cloud, GuardedCloud):
            release.router.cloud.observe = lambda seconds, outcome: self.cloud_latency.labels(
                outcome
            ).observe(seconds)
