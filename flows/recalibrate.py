"""Recalibrate the champion's router on new labelled data, without retraining anything."""

from __future__ import annotations

from prefect import flow
from prefect.runtime import flow_run

from tasks.bundle import recalibrated_bundle
from tasks.calibrate import calibrate_router, cloud_tier
from tasks.data import prepare_data
from tasks.gate import system_gate
from tasks.registry import fetch_bundle, promote_model, register_model
from tasks.support import tracking
from tasks.support.config import load_config
from tasks.support.housekeeping import clean_up_killed_runs


@flow(name="recalibrate-router")
def recalibrate_router(
    data_path: str,
    model: str = "models:/edgeroute@champion",
    preset: str = "demo",
    overrides: list[str] | None = None,
) -> dict[str, str]:
    """Fit the router of ``model`` to ``data_path``; register the result as the challenger."""
    config = load_config(preset, [*(overrides or []), f"data.path={data_path}"])
    tags = {"preset": preset, "prefect.flow_run_id": str(flow_run.get_id()), "recalibrates": model}
    run_name = f"recalibrate-{flow_run.get_name()}"
    clean_up_killed_runs(config)
    with tracking.pipeline_run(config.tracking.experiment, run_name, tags) as run_id:
        tracking.log_config(config)
        data = prepare_data(config)
        source = fetch_bundle(model)
        router = source.router()
        calibration = calibrate_router(config, data, router.edge, cloud_tier(config, router.cloud, data))
        system_gate(config, calibration)
        bundle = recalibrated_bundle(config, data, source, calibration, model)
        registered = register_model(config, bundle)
        promotion = promote_model(config, data, registered)
        tracking.log_stage_summary(run_id, "router", calibration.metrics, {"router": calibration.router_json})
    return {
        "mlflow_run_id": run_id,
        "recalibrated": model,
        "registered_model": f"models:/{registered.name}/{registered.version}",
        "min_confidence": f"{calibration.settings.min_confidence:.4f}",
        "router_edge_share": f"{100 * calibration.metrics['test_edge_share']:.1f} %",
        "router_accuracy": f"{calibration.metrics['test_accuracy']:.4f}",
        "promoted": "yes" if promotion["promoted"] else "no",
        "bundle": str(bundle),
    }
