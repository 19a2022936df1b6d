"""The training pipeline: data, DAPT, teacher, student, compression, gates, router, bundle, registry."""

from __future__ import annotations

import sys

from prefect import flow
from prefect.runtime import flow_run

from edgeroute.config import load_config, to_yaml
from tasks import summary, tracking
from tasks.bundle import bundle_model
from tasks.calibrate import calibrate_router, edge_and_cloud
from tasks.classifier import train_classifier
from tasks.compress import compress_model
from tasks.dapt import domain_adapt
from tasks.data import prepare_data
from tasks.distill import distill_student
from tasks.evaluate import benchmark_models
from tasks.gate import gate_model, system_gate
from tasks.registry import promote_model, register_model


@flow(name="training-pipeline")
def training_pipeline(
    preset: str = "demo", overrides: list[str] | None = None, data_path: str | None = None
) -> dict[str, str]:
    """Train, compress, gate, calibrate, register and promote the edge/cloud pair, tracked in MLflow."""
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
        student = distill_student(config, data, classifier, run_id) if config.distill.enabled else None
        for checkpoint in filter(None, (adapted, classifier, student)):
            tracking.log_stage_summary(
                run_id,
                checkpoint.stage,
                checkpoint.metrics,
                {"checkpoint": checkpoint.path, "mlflow_run_id": checkpoint.mlflow_run_id},
            )
        # The student at the edge and its teacher in the cloud; without one, the teacher's INT8 twin.
        teacher = classifier if student is not None else None
        compressed = compress_model(config, data, student or classifier, run_id, teacher=teacher)
        benchmarks = benchmark_models(config, data, compressed, run_id)
        decision = gate_model(config, data, compressed, benchmarks, run_id)
        edge, cloud = edge_and_cloud(decision.edge, compressed.cloud, data.labels, config.model.max_length)
        calibration = calibrate_router(config, data, edge, cloud, run_id)
        system_gate(config, calibration, run_id, decision.report)
        bundle = bundle_model(config, data, compressed, decision, calibration, benchmarks, run_id, student)
        registered = register_model(config, data, bundle, run_id)
        promotion = promote_model(config, data, registered, run_id)
        columns = summary.models(benchmarks, decision.metrics)
        tracking.log_stage_summary(run_id, "edge", decision.metrics, {"recipe": decision.recipe.name})
        tracking.log_stage_summary(run_id, "cloud", summary.cloud_tier(columns), {"bundle": bundle})
        tracking.log_stage_summary(run_id, "router", calibration.metrics, {"router": calibration.router_json})
        tracking.set_tags(
            run_id, {"registered_version": registered.version, "promoted": promotion["promoted"]}
        )
        layers = config.distill.layers if student is not None else None
        markdown = summary.to_markdown(
            run_name, classifier.metrics, columns, layers, calibration.metrics,
            calibration.settings.calibration, registered, promotion,
        )  # fmt: skip
        summary.publish_summary(run_id, markdown)
    return {
        "mlflow_run_id": run_id,
        "mlflow_experiment": config.tracking.experiment,
        "tracking_uri": tracking.tracking_uri(),
        "data_dir": str(data.directory),
        "data_digest": data.digest,
        "dapt_checkpoint": str(adapted.path),
        "classifier_checkpoint": str(classifier.path),
        **({"student_checkpoint": str(student.path)} if student is not None else {}),
        **summary.headline(classifier.metrics, columns, calibration.metrics, promotion),
        "bundle": str(bundle),
        "registered_model": f"models:/{registered.name}/{registered.version}",
        "champion": f"models:/{registered.name}@champion",
        "summary": markdown,
    }


if __name__ == "__main__":
    from edgeroute.cli import app

    app(["train", *sys.argv[1:]], prog_name="python -m flows.training")
