"""Watch a running router, or a fleet through its audit trail: publish its health and emit whether
it is degraded, as a Prefect event.

Retraining is not started here: the deployment trigger of
training-pipeline/retrain-from-production (prefect.yaml) runs it when the server has seen enough
`edgeroute.router.degraded` events.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow

from edgeroute.config import load_serve_config, redact_password
from tasks.monitoring import DEFAULT_GROUP, RetrainPolicy, emit_health_event, publish_health, read_health


@flow(name="monitor")
def monitor_router(
    service_url: str = "http://127.0.0.1:8000",
    serve_config: str | None = None,
    overrides: list[str] | None = None,
    experiment: str = "edgeroute-monitoring",
    service_group: str = DEFAULT_GROUP,
    model: str | None = "models:/edgeroute@champion",
) -> dict[str, Any]:
    """One health check of ``service_url``: published, and emitted as ``edgeroute.router.degraded``
    or ``edgeroute.router.healthy`` about the service, labelled with ``service_group`` (the
    retraining trigger counts each group apart).

    ``service_url`` is a service (``http://…``: its own report) or the audit trail a fleet writes
    (``postgresql://…``, or one box's SQLite file): the report of all its services, one model
    version at a time, and of each service (``instances``), over the monitor's window; ``model``,
    the champion's bundle, gives its version, costs and the reference profile drift is judged by
    (None: the busiest version is taken for the champion, and drift is not judged).

    The accuracy and edge-share floors are the service's own (``monitor`` of the serve config
    ``serve_config`` with ``overrides``, as `edgeroute serve --config --set` takes them); input
    drift is judged against the threshold its report carries.
    """
    thresholds = load_serve_config(Path(serve_config) if serve_config else None, overrides).monitor
    fleet = not service_url.startswith(("http://", "https://"))
    report = read_health(service_url, thresholds=thresholds, model=model if fleet else None)
    source = redact_password(service_url)
    publish_health(report, source, experiment)
    event = emit_health_event(report, source, RetrainPolicy.from_thresholds(thresholds), service_group)
    return {
        "score": report["score"],
        "status": report["status"],
        "alerts": report["alerts"],
        "breaches": event["breaches"],
        "event": event["event"],
        "event_id": event["id"],
    }
