"""The training pipeline: data, domain adaptation, classifier; later stages append here."""

from __future__ import annotations

import sys

from prefect import flow
from prefect.runtime import flow_run

from edgeroute.config import load_config, to_yaml
from tasks import tracking
from tasks.classifier import train_classifier
from tasks.dapt import domain_adapt
from tasks.data import prepare_data


@flow(name="training-pipeline")
def training_pipeline(
    preset: str = "demo", overrides: list[str] | None = None, data_path: str | None = None
) -> dict[str, str]:
    """Prepare data, adapt the base model to the domain and fine-tune the classifier, tracked in MLflow."""
    settings = list(overrides or []) + ([f"data.path={data_path}"] if data_path else [])
    config = load_config(preset, settings)
    tags = {"preset": preset, "prefect.flow_run_id": str(flow_run.get_id())}
    run_name = f"{config.name}-{flow_run.get_name()}"
    with tracking.pipeline_run(config.tracking.experiment, run_name, tags) as run_id:
        tracking.log_params(run_id, config.model_dump(mode="json"))
        tracking.log_text(run_id, to_yaml(config), "config.yaml")
        data = prepare_data(config, run_id)
        adapted = domain_adapt(config, data, run_id)
        classifier = train_classifier(config, data, adapted, run_id)
        for checkpoint in (adapted, classifier):
            tracking.log_stage_summary(
                run_id,
                checkpoint.stage,
                checkpoint.metrics,
                {"checkpoint": checkpoint.path, "mlflow_run_id": checkpoint.mlflow_run_id},
            )
    return {
        "mlflow_run_id": run_id,
        "mlflow_experiment": config.tracking.experiment,
        "tracking_uri": tracking.tracking_uri(),
        "data_dir": str(data.directory),
        "data_digest": data.digest,
        "dapt_checkpoint": str(adapted.path),
        "classifier_checkpoint": str(classifier.path),
        "test_accuracy": f"{classifier.metrics['test_accuracy']:.4f}",
        "test_macro_f1": f"{classifier.metrics['test_macro_f1']:.4f}",
        "tfidf_test_accuracy": f"{classifier.metrics['baseline_tfidf_test_accuracy']:.4f}",
    }


if __name__ == "__main__":
    from edgeroute.cli import app

    app(["train", *sys.argv[1:]], prog_name="python -m flows.training")
