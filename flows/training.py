"""The training pipeline: data, domain adaptation, classifier, compression, gate, bundle."""

from __future__ import annotations

import sys

from prefect import flow
from prefect.runtime import flow_run

from edgeroute.config import load_config, to_yaml
from tasks import tracking
from tasks.bundle import bundle_model
from tasks.classifier import train_classifier
from tasks.compress import compress_model
from tasks.dapt import domain_adapt
from tasks.data import prepare_data
from tasks.evaluate import benchmark_models
from tasks.gate import gate_model


@flow(name="training-pipeline")
def training_pipeline(
    preset: str = "demo", overrides: list[str] | None = None, data_path: str | None = None
) -> dict[str, str]:
    """Train, compress and gate the edge classifier and bundle it, every stage tracked in MLflow."""
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
        compressed = compress_model(config, data, classifier, run_id)
        benchmarks = benchmark_models(config, data, compressed, run_id)
        decision = gate_model(config, data, compressed, benchmarks, run_id)
        bundle = bundle_model(config, data, compressed, decision, benchmarks, run_id)
        tracking.log_stage_summary(run_id, "edge", decision.metrics, {"recipe": decision.recipe.name})
        tracking.log_stage_summary(run_id, "cloud", benchmarks["fp32"], {"bundle": bundle})
    fp32, int8 = benchmarks["fp32"], decision.metrics
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
        "int8_size_reduction": f"{100 * (1 - int8['size_mb'] / fp32['size_mb']):.1f} %",
        "int8_accuracy_kept": f"{100 * int8['accuracy'] / fp32['accuracy']:.2f} %",
        "p50_ms_fp32_int8": f"{fp32['p50_ms']:.2f} / {int8['p50_ms']:.2f}",
        "bundle": str(bundle),
    }


if __name__ == "__main__":
    from edgeroute.cli import app

    app(["train", *sys.argv[1:]], prog_name="python -m flows.training")
