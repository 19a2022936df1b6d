"""Monitoring: read a service's health report, publish it, and decide whether to retrain.

Retraining is triggered when accuracy from feedback or the edge share stays below its
threshold for ``sustained`` checks in a row, and not again within the cool-down. The state
between checks (breaches in a row, last trigger) is a Prefect Variable, so it survives worker
restarts and is visible in the UI.
"""

from __future__ import annotations

import json
import os
import urllib.request
from dataclasses import dataclass
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.variables import Variable

from edgeroute.config import Thresholds
from tasks.support import tracking

STATE_VARIABLE = "edgeroute-monitor-state"


@dataclass(frozen=True)
class RetrainPolicy:
    """Retrain below these accuracy and edge-share floors (the service's alert thresholds unless
    given), after ``sustained`` breaching checks in a row, at most once per ``cooldown_s``."""

    min_accuracy: float = Thresholds().min_accuracy
    min_edge_share: float = Thresholds().min_edge_share
    sustained: int = 2
    cooldown_s: float = 24 * 3600

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
    return found


def decide(
    state: dict[str, Any], found: list[str], now: float, policy: RetrainPolicy
) -> tuple[dict, str | None]:
    """The next state and, when retraining is due, why; None otherwise."""
    in_a_row = state.get("breaches_in_a_row", 0) + 1 if found else 0
    last = state.get("last_triggered")
    state = {"breaches_in_a_row": in_a_row, "last_triggered": last}
    if in_a_row < policy.sustained:
        return state, None
    if last is not None and now - last < policy.cooldown_s:
        return state, None
    return state | {"last_triggered": now, "breaches_in_a_row": 0}, "; ".join(found)


def to_markdown(report: dict[str, Any], url: str) -> str:
    metrics = report["metrics"]

    def show(value: float | None, pattern: str) -> str:
        return "n/a" if value is None else pattern.format(value)

    alerts = "\n".join(f"- {a}" for a in report["alerts"]) or "- none"
    advice = "\n".join(f"- {r}" for r in report["recommendations"])
    trends = ", ".join(f"{k} {v}" for k, v in report["trends"].items())
    return f"""# Router health: {report["score"]}/100 ({report["status"]})

Service `{url}`, model `{report.get("model_version", "?")}`, last {report["window_s"]:.0f} s.

| requests | edge share | accuracy (feedback) | cost per query | p95 latency | avg complexity |
|---|---|---|---|---|---|
| {metrics["requests"]} | {show(metrics["edge_share"], "{:.1%}")} | {show(metrics["accuracy"], "{:.3f}")} \
| {show(metrics["cost_per_query"], "${:.5f}")} | {show(metrics["p95_latency_ms"], "{:.1f} ms")} \
| {show(metrics["avg_complexity"], "{:.3f}")} |

Trends: {trends}. Monthly cost at the current rate: ${report["cost_estimate"]["monthly_cost"]:,.0f} \
(cloud only ${report["cost_estimate"]["monthly_cloud_only_cost"]:,.0f}).

## Alerts
{alerts}

## Recommendations
{advice}
"""


@task(name="read-health", retries=2, retry_delay_seconds=5)
def read_health(url: str, api_key_env: str = "EDGEROUTE_API_KEY") -> dict[str, Any]:
    """Prefect task: GET /v1/health of an edgeroute service."""
    headers = {"X-API-Key": os.environ[api_key_env]} if os.environ.get(api_key_env) else {}
    request = urllib.request.Request(f"{url.rstrip('/')}/v1/health", headers=headers)
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


@task(name="publish-health")
def publish_health(report: dict[str, Any], url: str, experiment: str) -> None:
    """Prefect task: the report as a markdown artifact, MLflow metrics, and logged alerts."""
    logger = get_run_logger()
    create_markdown_artifact(
        key="router-health", markdown=to_markdown(report, url), description=f"Health of {url}"
    )
    metrics = {k: v for k, v in report["metrics"].items() if v is not None} | {"score": report["score"]}
    with tracking.pipeline_run(
        experiment, "health-check", {"service": url, "status": report["status"]}
    ) as run_id:
        tracking.log_metrics(run_id, metrics)
        tracking.log_text(run_id, json.dumps(report, indent=2), "health.json")
        tracking.set_tags(run_id, {"alerts": "; ".join(report["alerts"]) or "none"})
    for alert in report["alerts"]:
        logger.warning("ALERT %s: %s", url, alert)


@task(name="maybe-retrain")
def maybe_retrain(
    report: dict[str, Any], policy: RetrainPolicy, deployment: str, parameters: dict[str, Any], now: float
) -> str | None:
    """Prefect task: trigger ``deployment`` when retraining is due; the flow run id, or None."""
    from prefect.deployments import run_deployment

    state, reason = decide(
        Variable.get(STATE_VARIABLE, default={}) or {}, breaches(report, policy), now, policy
    )
    Variable.set(STATE_VARIABLE, state, overwrite=True)
    if reason is None:
        return None
    flow_run = run_deployment(deployment, parameters=parameters, timeout=0, tags=["triggered-by-monitor"])
    get_run_logger().warning("retraining triggered (%s): %s flow run %s", reason, deployment, flow_run.id)
    return str(flow_run.id)
