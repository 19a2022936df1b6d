"""The training pipeline: data, DAPT, teacher, student, compression, gates, router, behavioural
checks, bundle, registry.

Each task opens its own nested MLflow run under the pipeline run (`tracking.stage`); the flow
only wires them, in the order of DESIGN §1.
"""

from __future__ import annotations

from prefect import flow
from prefect.runtime import flow_run

from tasks.behaviour import behaviour_checks, read_cases
from tasks.bundle import bundle_model
from tasks.calibrate import calibrate_router, cloud_tier, edge_and_cloud
from tasks.classifier import train_classifier
from tasks.compress import compress_model
from tasks.dapt import domain_adapt
from tasks.data import prepare_data
from tasks.distill import distill_student
from tasks.evaluate import benchmark_models
from tasks.gate import gate_model, system_gate
from tasks.registry import promote_model, register_model
from tasks.support import tracking
from tasks.support.config import load_config
from tasks.support.housekeeping import clean_up_killed_runs
from tasks.support.summary import summarize_run


@flow(name="training-pipeline")
def training_pipeline(
    preset: str = "demo",
    overrides: list[str] | None = None,
    data_path: str | None = None,
    production_trail: str | None = None,
) -> dict[str, str]:
    """Train, compress, gate, calibrate, register and promote the edge/cloud pair, tracked in MLflow.

    ``production_trail``: an audit trail kept with ``audit.keep_text: masked``, whose cloud
    answers and feedback the training split learns from (``data.production``)."""
    settings = list(overrides or []) + ([f"data.path={data_path}"] if data_path else [])
    settings += [f"data.production.trail={production_trail}"] if production_trail else []
    config = load_config(preset, settings)
    run_name = f"{config.name}-{flow_run.get_name()}"
    tags = {"preset": preset, "prefect.flow_run_id": str(flow_run.get_id())}
    clean_up_killed_runs(config)
    with tracking.pipeline_run(config.tracking.experiment, run_name, tags):
        tracking.log_config(config)
        data = prepare_data(config)
        cases = read_cases(config.behaviour, data.labels)  # a bad cases file fails before training
        adapted = domain_adapt(config, data)
        teacher = train_classifier(config, data, adapted)
        student = distill_student(config, data, teacher) if config.distill.enabled else None
        # The student at the edge and its teacher in the cloud; without one, the teacher's INT8 twin.
        compressed = compress_model(config, data, student or teacher, teacher=teacher if student else None)
        benchmarks = benchmark_models(config, data, compressed)
        decision = gate_model(config, data, compressed, benchmarks)
        edge, cloud = edge_and_cloud(decision.edge, compressed.cloud, data.labels, config.model.max_length)
        tier = cloud_tier(config, cloud, data)
        calibration = calibrate_router(config, data, edge, tier)
        system_gate(config, calibration, decision.report)
        behaviour = (
            behaviour_checks(config, data, edge, tier, calibration.settings, cases)
            if config.behaviour.enabled
            else None
        )
        bundle = bundle_model(config, data, compressed, decision, calibration, benchmarks, student, behaviour)
        registered = register_model(config, bundle)
        promotion = promote_model(config, data, registered)
        return summarize_run(
            config, run_name, data=data, adapted=adapted, classifier=teacher, student=student,
            benchmarks=benchmarks, decision=decision, calibration=calibration, behaviour=behaviour,
            bundle=bundle, registered=registered, promotion=promotion,
        )  # fmt: skip
