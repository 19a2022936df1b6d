"""Monitoring: read a service's or a fleet's health report, publish it, and say whether it is degraded.

The report is a service's own (``GET /v1/health`` of its URL) or a fleet's, computed from the
audit trail its services write (a ``postgresql://`` URL, or one box's SQLite file). Every check
emits a Prefect event about the service (resource ``edgeroute.service.<url>``, labelled with its
``edgeroute.service-group``, by which the trigger counts):
`DEGRADED` when the report breaches a retraining condition (`breaches`: accuracy from feedback
or the edge share below its floor, or input drift past its threshold), `HEALTHY` otherwise,
with the figures as payload. Whether and when to retrain is not decided here: the deployment
trigger of ``training-pipeline/retrain-from-production`` in prefect.yaml, an automation on the Prefect
server, counts the degraded events and runs the deployment.
"""

from __future__ import annotations

import json
import os
import re
import time
import urllib.request
from dataclasses import dataclass
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.events import emit_event

from edgeroute import trails
from edgeroute.cloud import SAME_ORIGIN
from edgeroute.config import Thresholds, redact_password
from edgeroute.monitor import drift_alerts, fleet_report
from edgeroute.releases import model_version
from tasks.registry import fetch_bundle, resolve_version
from tasks.support import markdown, tracking
from tasks.support.markdown import code

DEGRADED = "edgeroute.router.degraded"
HEALTHY = "edgeroute.router.healthy"
RESOURCE_PREFIX = "edgeroute.service."
# The resource label the retraining trigger counts by (prefect.yaml: for_each): one count per group.
GROUP_LABEL = "edgeroute.service-group"
DEFAULT_GROUP = "default"


@dataclass(frozen=True)
class RetrainPolicy:
    """The accuracy and edge-share floors below which a report is degraded (the service's alert
    thresholds unless given). Drift is judged against the report's own threshold."""

    min_accuracy: float = Thresholds().min_accuracy
    min_edge_share: float = Thresholds().min_edge_share

    @classmethod
    def from_thresholds(cls, thresholds: Thresholds, **values: Any) -> RetrainPolicy:
        return cls(min_accuracy=thresholds.min_accuracy, min_edge_share=thresholds.min_edge_share, **values)


def breaches(report: dict[str, Any], policy: RetrainPolicy) -> list[str]:
    """Which retraining conditions the report shows (metrics with no data never breach)."""
    metrics = report["metrics"]
    found = []
    if metrics["accuracy"] is not None and metrics["accuracy"] < policy.min_accuracy:
        found.append(f"accuracy {metrics['accuracy']:.3f} < {policy.min_accuracy:g}")
    if metrics["edge_share"] is not None and metrics["edge_share"] < policy.min_edge_share:
        found.append(f"edge share {metrics['edge_share']:.3f} < {policy.min_edge_share:g}")
    return found + drift_alerts(report.get("drift"))


def service_resource(url: str, group: str = DEFAULT_GROUP) -> dict[str, str]:
    """The event resource of the service (or trail) at ``url``: ``edgeroute.service.<url>``,
    named by its URL (a password left out), in the service group ``group``."""
    url = redact_password(url.rstrip("/"))
    return {
        "prefect.resource.id": f"{RESOURCE_PREFIX}{url}",
        "prefect.resource.name": url,
        GROUP_LABEL: group,
    }


def degradation_event(
    report: dict[str, Any], url: str, policy: RetrainPolicy, group: str = DEFAULT_GROUP
) -> dict[str, Any]:
    """The event of one check (`emit_event`'s ``event``, ``resource`` and ``payload``): `DEGRADED`
    when the report breaches, `HEALTHY` otherwise, with the figures the decision was made on."""
    metrics, drift = report["metrics"], report.get("drift") or {}
    found = breaches(report, policy)
    payload = {
        "score": report["score"],
        "status": report["status"],
        "breaches": found,
        "alerts": report["alerts"],
        "accuracy": metrics["accuracy"],
        "labelled": metrics["labelled"],
        "min_accuracy": policy.min_accuracy,
        "edge_share": metrics["edge_share"],
        "min_edge_share": policy.min_edge_share,
        "requests": metrics["requests"],
        "drift_max_psi": drift.get("max_psi"),
        "drift_psi": drift.get("features", {}),
        "drift_threshold": drift.get("threshold"),
        "model_version": report.get("model_version"),
        "versions": sorted(report.get("versions") or {}),
        "canary": report.get("canary"),
    }
    return {
        "event": DEGRADED if found else HEALTHY,
        "resource": service_resource(url, group),
        "payload": payload,
    }


def _show(value: float | None, pattern: str) -> str:
    return "n/a" if value is None else pattern.format(value)


def _breakdown(title: str, column: str, figures: dict[str, dict[str, Any]], roles: dict) -> str:
    """A table of the window's metrics of each model version, or each instance of a fleet."""
    if not figures:
        return ""
    table = markdown.table(
        [column, "requests", "edge share", "accuracy (feedback)", "cost per query", "p95 latency"],
        [[f"{code(name)}{roles.get(name, '')}", m["requests"], _show(m["edge_share"], "{:.1%}"),
          f"{_show(m['accuracy'], '{:.3f}')} ({m['labelled']} labelled)",
          _show(m["cost_per_query"], "${:.5f}"), _show(m["p95_latency_ms"], "{:.1f} ms")]
         for name, m in figures.items()],
    )  # fmt: skip
    return f"\n{title}:\n\n{table}\n"


def _breakdowns(report: dict[str, Any]) -> str:
    canary = (report.get("canary") or {}).get("model_version")
    roles = {report.get("model_version"): " champion", canary: " canary"}
    return _breakdown("By model version", "version", report.get("versions") or {}, roles) + _breakdown(
        "By instance (the fleet's services)", "instance", report.get("instances") or {}, {}
    )


def _drift_line(report: dict[str, Any]) -> str:
    drift = report.get("drift")
    if not drift:
        return ""
    features = ", ".join(f"{name} {_show(psi, '{:.3f}')}" for name, psi in drift["features"].items())
    return (
        f"\nInput drift ({drift['method'].upper()} over {drift['samples']} requests, threshold "
        f"{drift['threshold']:g}): max {_show(drift['max_psi'], '{:.3f}')}; {features}.\n"
    )


def to_markdown(report: dict[str, Any], url: str) -> str:
    metrics = report["metrics"]
    alerts = "\n".join(f"- {a}" for a in report["alerts"]) or "- none"
    advice = "\n".join(f"- {r}" for r in report["recommendations"])
    trends = ", ".join(f"{k} {v}" for k, v in report["trends"].items())
    canary = report.get("canary")
    serving = f"model `{report.get('model_version', '?')}`" + (
        f", canary `{canary['model_version']}` on {canary['share']:.0%} of traffic" if canary else ""
    )
    return f"""# Router health: {report["score"]}/100 ({report["status"]})

Service `{url}`, {serving}, last {report["window_s"]:.0f} s.

| requests | edge share | accuracy (feedback) | cost per query | p95 latency | avg complexity |
|---|---|---|---|---|---|
| {metrics["requests"]} | {_show(metrics["edge_share"], "{:.1%}")} | {_show(metrics["accuracy"], "{:.3f}")} \
| {_show(metrics["cost_per_query"], "${:.5f}")} | {_show(metrics["p95_latency_ms"], "{:.1f} ms")} \
| {_show(metrics["avg_complexity"], "{:.3f}")} |
{_breakdowns(report)}{_drift_line(report)}
Trends: {trends}. Monthly cost at the current rate: ${report["cost_estimate"]["monthly_cost"]:,.0f} \
(cloud only ${report["cost_estimate"]["monthly_cloud_only_cost"]:,.0f}).

## Alerts
{alerts}

## Recommendations
{advice}
"""


def health_metrics(report: dict[str, Any]) -> dict[str, float]:
    """The report's figures as MLflow metrics: overall, ``version.<v>.<metric>`` per model version,
    ``instance.<i>.<metric>`` per service of a fleet, the labels of each feedback source as
    ``feedback_sources.<source>`` (a character MLflow refuses in a name becomes ``_``),
    ``drift.max_psi`` and ``drift.psi.<feature>``."""
    metrics = _figures(report["metrics"]) | {"score": report["score"]}
    for kind in ("version", "instance"):
        for name, figures in (report.get(f"{kind}s") or {}).items():
            metrics |= _figures(figures, f"{kind}.{_metric_name(name)}.")
    drift = report.get("drift") or {}
    if drift.get("max_psi") is not None:
        metrics["drift.max_psi"] = drift["max_psi"]
        metrics |= {f"drift.psi.{k}": v for k, v in drift["features"].items() if v is not None}
    return metrics


def _metric_name(name: str) -> str:
    return re.sub(r"[^\w.\- ]", "_", name)


def _figures(figures: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Window figures as metrics named ``prefix`` + figure; a mapping of counts (the labels by
    feedback source) as one metric an entry."""
    flat: dict[str, float] = {}
    for name, value in figures.items():
        if isinstance(value, dict):
            flat |= {f"{prefix}{name}.{_metric_name(k)}": v for k, v in value.items()}
        elif value is not None:
            flat[f"{prefix}{name}"] = value
    return flat


@task(name="read-health", retries=2, retry_delay_seconds=5)
def read_health(
    url: str,
    api_key_env: str = "EDGEROUTE_API_KEY",
    thresholds: Thresholds | None = None,
    champion: str | None = None,
    model: str | None = None,
) -> dict[str, Any]:
    """Prefect task: the health report of an edgeroute service (GET /v1/health of an http(s)
    URL; a redirect to another origin is refused, so the API key never leaves the service's), or
    of every service writing an audit trail (`edgeroute.monitor.fleet_report` over ``thresholds``'
    window). For a trail, ``model`` is the champion's bundle (``models:/<name>@champion`` or a
    directory): its version (unless ``champion`` names one), costs and reference profile, by
    which drift is judged."""
    if not url.startswith(("http://", "https://")):
        thresholds = thresholds or Thresholds()
        served: dict[str, Any] = {"champion": champion}
        if model is not None:
            bundle = fetch_bundle.fn(model)
            registered = resolve_version(model) if model.startswith("models:/") else None
            served = {"champion": champion or model_version(bundle, registered), "profile": bundle.profile(),
                      "costs": bundle.router_settings().costs}  # fmt: skip
        rows = trails.window(url, time.time() - thresholds.window_s, thresholds.max_events)
        return fleet_report(rows, thresholds, **served)
    headers = {"X-API-Key": os.environ[api_key_env]} if os.environ.get(api_key_env) else {}
    request = urllib.request.Request(f"{url.rstrip('/')}/v1/health", headers=headers)
    with SAME_ORIGIN.open(request, timeout=10) as response:
        return json.load(response)


@task(name="publish-health")
def publish_health(report: dict[str, Any], url: str, experiment: str) -> None:
    """Prefect task: the report as a markdown artifact, MLflow metrics, and logged alerts."""
    logger = get_run_logger()
    create_markdown_artifact(
        key="router-health", markdown=to_markdown(report, url), description=f"Health of {url}"
    )
    tags = {"service": url, "status": report["status"], "model_version": str(report.get("model_version"))}
    if report.get("canary"):
        tags["canary"] = report["canary"]["model_version"]
    with tracking.pipeline_run(experiment, "health-check", tags) as run_id:
        tracking.log_metrics(run_id, health_metrics(report))
        tracking.log_text(run_id, json.dumps(report, indent=2), "health.json")
        tracking.set_tags(run_id, {"alerts": "; ".join(report["alerts"]) or "none"})
    for alert in report["alerts"]:
        logger.warning("ALERT %s: %s", url, alert)


@task(name="emit-health-event")
def emit_health_event(
    report: dict[str, Any], url: str, policy: RetrainPolicy, group: str = DEFAULT_GROUP
) -> dict[str, Any]:
    """Prefect task: emit the check's event (`degradation_event`); its name, id and breaches
    (the id is None where events go nowhere, e.g. with no Prefect API)."""
    event = degradation_event(report, url, policy, group)
    emitted = emit_event(**event)
    breached = event["payload"]["breaches"]
    if breached:
        get_run_logger().warning("%s degraded (%s): emitted %s", url, "; ".join(breached), event["event"])
    return {
        "event": event["event"],
        "id": None if emitted is None else str(emitted.id),
        "breaches": breached,
    }
