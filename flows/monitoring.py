"""Watch a running router: publish its health and trigger retraining when it stays unhealthy."""

from __future__ import annotations

import time
from typing import Any

from prefect import flow

from tasks.monitoring import RetrainPolicy, maybe_retrain, publish_health, read_health


@flow(name="monitor")
def monitor_router(
    service_url: str = "http://127.0.0.1:8000",
    min_accuracy: float = 0.85,
    min_edge_share: float = 0.80,
    sustained_checks: int = 2,
    cooldown_hours: float = 24.0,
    retrain_deployment: str = "training-pipeline/on-demand",
    retrain_parameters: dict[str, Any] | None = None,
    experiment: str = "edgeroute-monitoring",
) -> dict[str, Any]:
    """One health check of ``service_url``; retraining when a breach lasts ``sustained_checks``."""
    report = read_health(service_url)
    publish_health(report, service_url, experiment)
    policy = RetrainPolicy(min_accuracy, min_edge_share, sustained_checks, cooldown_hours * 3600)
    triggered = maybe_retrain(report, policy, retrain_deployment, retrain_parameters or {}, time.time())
    return {
        "score": report["score"],
        "status": report["status"],
        "alerts": report["alerts"],
        "retraining": triggered,
    }
