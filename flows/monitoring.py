"""Watch a running router: publish its health and trigger retraining when it stays unhealthy."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from prefect import flow

from edgeroute.config import load_serve_config
from tasks.monitoring import RetrainPolicy, maybe_retrain, publish_health, read_health


@flow(name="monitor")
def monitor_router(
    service_url: str = "http://127.0.0.1:8000",
    serve_config: str | None = None,
    overrides: list[str] | None = None,
    sustained_checks: int = RetrainPolicy.sustained,
    cooldown_hours: float = RetrainPolicy.cooldown_s / 3600,
    retrain_deployment: str = "training-pipeline/on-demand",
    retrain_parameters: dict[str, Any] | None = None,
    experiment: str = "edgeroute-monitoring",
) -> dict[str, Any]:
    """One health check of ``service_url``; retraining when a breach lasts ``sustained_checks``.

    The accuracy and edge-share floors are the service's own (``monitor`` of the serve config
    ``serve_config`` with ``overrides``, as `edgeroute serve --config --set` takes them).
    """
    thresholds = load_serve_config(Path(serve_config) if serve_config else None, overrides).monitor
    report = read_health(service_url)
    publish_health(report, service_url, experiment)
    policy = RetrainPolicy.from_thresholds(
        thresholds, sustained=sustained_checks, cooldown_s=cooldown_hours * 3600
    )
    triggered = maybe_retrain(report, policy, retrain_deployment, retrain_parameters or {}, time.time())
    return {
        "score": report["score"],
        "status": report["status"],
        "alerts": report["alerts"],
        "retraining": triggered,
    }
