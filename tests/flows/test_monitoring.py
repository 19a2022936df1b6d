"""The monitoring flow: what a breach is, the event a check emits, and the flow against a real
service emitting `edgeroute.router.degraded` to a real Prefect server."""

from __future__ import annotations

import time

import httpx
import pytest
from prefect.client.orchestration import get_client
from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

from edgeroute.monitor import fleet_report
from edgeroute.trails import window
from flows.monitoring import monitor_router
from tasks.monitoring import (
    DEGRADED,
    HEALTHY,
    RetrainPolicy,
    breaches,
    degradation_event,
    health_metrics,
    to_markdown,
)
from tests.services import degrade, edge_service, replica

POLICY = RetrainPolicy(min_accuracy=0.85, min_edge_share=0.8)
URL = "http://127.0.0.1:8000"
SERVICE = {
    "prefect.resource.id": f"edgeroute.service.{URL}",
    "prefect.resource.name": URL,
    "edgeroute.service-group": "default",
}


def report(accuracy=0.95, edge_share=0.9, **extra) -> dict:
    """A health report as the service writes it; ``extra`` adds versions, drift, canary."""
    metrics = {"requests": 40, "edge_share": edge_share, "cost_per_query": 0.002, "p95_latency_ms": 12.0,
               "avg_complexity": 0.3, "accuracy": accuracy, "labelled": 20}  # fmt: skip
    return {
        "score": 100, "status": "excellent", "window_s": 3600.0, "metrics": metrics, "alerts": [],
        "trends": {"edge_share": "stable"}, "recommendations": ["All metrics within thresholds."],
        "cost_estimate": {"requests_per_day": 960.0, "monthly_cost": 57.6, "monthly_cloud_only_cost": 288.0},
    } | extra  # fmt: skip


def drift(max_psi, threshold=0.25) -> dict:
    features = {"length": 0.02, "unfamiliar_share": max_psi, "edge_confidence": 0.05, "label": 0.01}
    return {"method": "psi", "features": features, "max_psi": max_psi, "threshold": threshold, "samples": 400}


def test_a_breach_is_low_accuracy_low_edge_share_or_drift_past_its_threshold():
    assert breaches(report(), POLICY) == []
    assert breaches(report(accuracy=None, edge_share=None), POLICY) == [], "no data never breaches"
    assert breaches(report(accuracy=0.5, edge_share=0.7), POLICY) == [
        "accuracy 0.500 < 0.85",
        "edge share 0.700 < 0.8",
    ]
    assert breaches(report(drift=None), POLICY) == [], "no reference profile: no drift"
    assert breaches(report(drift=drift(0.25)), POLICY) == [], "at the threshold is not past it"
    assert breaches(report(drift=drift(0.61)), POLICY) == ["drift psi 0.61 above 0.25 (unfamiliar_share)"]


def test_the_event_of_a_check_names_the_service_and_carries_the_figures():
    versions = {
        "edgeroute/3": report()["metrics"] | {"accuracy": 0.4},
        "edgeroute/4": report()["metrics"] | {"requests": 4},
    }
    degraded = report(
        accuracy=0.4, drift=drift(0.61), versions=versions, model_version="edgeroute/3",
        canary={"model_version": "edgeroute/4", "share": 0.1},
    )  # fmt: skip
    event = degradation_event(degraded, URL + "/", POLICY)
    assert event["event"] == DEGRADED
    assert event["resource"] == SERVICE
    payload = event["payload"]
    assert payload["breaches"] == ["accuracy 0.400 < 0.85", "drift psi 0.61 above 0.25 (unfamiliar_share)"]
    figures = ("accuracy", "labelled", "edge_share", "requests")
    assert [payload[name] for name in figures] == [0.4, 20, 0.9, 40]
    assert payload["drift_max_psi"] == 0.61 and payload["drift_psi"]["unfamiliar_share"] == 0.61
    assert payload["model_version"] == "edgeroute/3" and payload["versions"] == ["edgeroute/3", "edgeroute/4"]
    assert payload["canary"] == {"model_version": "edgeroute/4", "share": 0.1}

    healthy = degradation_event(report(), URL, POLICY)  # today's report: no versions, drift or canary
    assert healthy["event"] == HEALTHY and healthy["payload"]["breaches"] == []
    assert healthy["payload"]["drift_max_psi"] is None and healthy["payload"]["versions"] == []

    markdown = to_markdown(degraded, URL)
    assert "| `edgeroute/4` canary | 4 |" in markdown and "max 0.610" in markdown
    assert "By model version" not in to_markdown(report(), URL) and "drift" not in to_markdown(report(), URL)
    metrics = health_metrics(degraded)
    assert metrics["version.edgeroute_3.accuracy"] == 0.4 and metrics["drift.max_psi"] == 0.61
    assert metrics["drift.psi.label"] == 0.01


def test_the_event_of_a_fleet_names_its_trail_without_the_password_and_its_service_group():
    event = degradation_event(report(accuracy=0.4), "postgresql://ops:s3cret@db:5432/audit", POLICY, "eu")
    assert event["resource"] == {
        "prefect.resource.id": "edgeroute.service.postgresql://ops:***@db:5432/audit",
        "prefect.resource.name": "postgresql://ops:***@db:5432/audit",
        "edgeroute.service-group": "eu",
    }


def degraded_events(resource_id: str, expected: int, timeout_s: float = 30) -> list:
    """The degraded events of ``resource_id`` the Prefect server has stored, once it has ``expected``."""
    name, resource = EventNameFilter(name=[DEGRADED]), EventResourceFilter(id=[resource_id])
    query = EventFilter(event=name, resource=resource)
    deadline = time.monotonic() + timeout_s
    with get_client(sync_client=True) as client:
        while True:
            events = client.read_events(filter=query, limit=50).events  # the server takes at most 50
            if len(events) >= expected or time.monotonic() > deadline:
                return events
            time.sleep(0.5)


@pytest.mark.usefixtures("prefect_harness")
def test_the_monitor_emits_a_degraded_event_when_every_answer_was_wrong(tiny_bundle, tmp_path, mlflow_uri):
    service, audit = edge_service(tiny_bundle, tmp_path)
    try:
        degrade(service.url)  # every answer was wrong
        summary = monitor_router(service.url)
    finally:
        service.stop()
        audit.close()

    assert summary["event"] == DEGRADED and summary["breaches"][0] == "accuracy 0.000 < 0.85"
    assert "accuracy 0 below 0.85" in summary["alerts"] and summary["status"] in {"poor", "critical"}
    [event] = degraded_events(f"edgeroute.service.{service.url}", expected=1)
    assert str(event.id) == summary["event_id"]
    assert event.resource["prefect.resource.name"] == service.url
    assert (event.payload["accuracy"], event.payload["labelled"]) == (0.0, 10)
    assert event.payload["breaches"] == summary["breaches"]
    assert "flow-run" in {related.role for related in event.related}, "linked to the monitor's flow run"


@pytest.mark.usefixtures("prefect_harness")
def test_the_monitor_judges_a_fleet_from_the_trail_its_replicas_write(
    tiny_bundle, tmp_path, mlflow_uri, postgres_url
):
    replicas = [replica(tiny_bundle, tmp_path, postgres_url, name) for name in ("edge-1", "edge-2")]
    try:
        degrade(replicas[0][0].url, count=6)  # one replica's answers all wrong, the other's not judged
        httpx.post(f"{replicas[1][0].url}/v1/classify", json={"texts": ["thanks", "where is my parcel"]})
    finally:
        for service, trail in replicas:
            service.stop()
            trail.close()
    summary = monitor_router(postgres_url, service_group="eu-fleet", model=None)
    assert summary["event"] == DEGRADED and summary["breaches"][0] == "accuracy 0.000 < 0.85"
    [event] = degraded_events(f"edgeroute.service.{postgres_url}", expected=1)
    assert event.resource["edgeroute.service-group"] == "eu-fleet"
    assert (event.payload["requests"], event.payload["labelled"]) == (8, 6)
    report = fleet_report(window(postgres_url, time.time() - 3600, 100))
    assert "| `edge-1` | 6 |" in to_markdown(report, postgres_url)
    metrics = health_metrics(report)
    assert metrics["instance.edge-2.requests"] == 2
    assert metrics["instance.edge-1.feedback_sources.address 127.0.0.1"] == 6
    assert metrics["feedback_sources.address 127.0.0.1"] == 6
