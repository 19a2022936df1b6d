"""The training pipeline: data so far; later stages append here."""

from __future__ import annotations

import sys

from prefect import flow
from prefect.runtime import flow_run

from edgeroute.config import load_config, to_yaml
from tasks import tracking
from tasks.data import prepare_data


@flow(name="training-pipeline")
def training_pipeline(
    preset: str = "demo", overrides: list[str] | None = None, data_path: str | None = None
) -> dict[str, str]:
    """Prepare the data for a run of the edge/cloud router pipeline, tracked in MLflow."""
    settings = list(overrides or []) + ([f"data.path={data_path}"] if data_path else [])
    config = load_config(preset, settings)
    tags = {"preset": preset, "prefect.flow_run_id": str(flow_run.get_id())}
    run_name = f"{config.name}-{flow_run.get_name()}"
    with tracking.pipeline_run(config.tracking.experiment, run_name, tags) as run_id:
        tracking.log_params(run_id, config.model_dump(mode="json"))
        tracking.log_text(run_id, to_yaml(config), "config.yaml")
        data = prepare_data(config, run_id)
    return {
        "mlflow_run_id": run_id,
        "mlflow_experiment": config.tracking.experiment,
        "tracking_uri": tracking.tracking_uri(),
        "data_dir": str(data.directory),
        "data_digest": data.digest,
    }


if __name__ == "__main__":
    from edgeroute.cli import app

    app(["train", *sys.argv[1:]], prog_name="python -m flows.training")
