"""The bundle: what passed the gate, packaged with its manifest and lineage (DESIGN §3)."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from prefect import task

from edgeroute.bundle import (
    CLOUD_MODEL,
    EDGE_MODEL,
    MANIFEST,
    PROFILE,
    ROUTER,
    TOKENIZER,
    Bundle,
    derive_bundle,
    write_bundle,
)
from edgeroute.drift import reference_profile
from edgeroute.model import OnnxClassifier, load_tokenizer
from edgeroute.router import Router, RouterSettings
from edgeroute.signing import SIGNATURE
from tasks.behaviour import BehaviourReport
from tasks.calibrate import Calibration
from tasks.compress import Compressed
from tasks.distill import STUDENT
from tasks.gate import GateDecision
from tasks.support import tracking
from tasks.support.config import PipelineConfig
from tasks.support.dataset import PreparedData
from tasks.support.trainer import Checkpoint


def bundle_files(compressed: Compressed, decision: GateDecision, calibration: Calibration) -> dict[str, Path]:
    """Bundle path -> source: INT8 edge, FP32 cloud (the teacher), router settings, and the cloud
    tokenizer when it differs from the edge one."""
    fp32 = compressed.cloud
    files = {
        EDGE_MODEL: decision.edge.model,
        TOKENIZER: decision.edge.tokenizer,
        CLOUD_MODEL: fp32.model,
        ROUTER: calibration.router_json,
    }
    if fp32.tokenizer.read_bytes() != decision.edge.tokenizer.read_bytes():
        files[f"cloud/{TOKENIZER}"] = fp32.tokenizer
    return files


def input_profile(
    config: PipelineConfig, data: PreparedData, decision: GateDecision, calibration: Calibration
) -> str:
    """The reference profile (`edgeroute.drift`) of the validation messages as the gated edge
    model, with the calibrated temperature, sees them: what the service measures drift against."""
    tokenizer = load_tokenizer(decision.edge.tokenizer, config.model.max_length)
    edge = OnnxClassifier(decision.edge.model, tokenizer, data.labels)
    router = Router(edge, None, RouterSettings.load(calibration.router_json))
    return reference_profile(router, data.frame("validation")["text"].tolist()).to_json()


@task(name="bundle")
def bundle_model(
    config: PipelineConfig,
    data: PreparedData,
    compressed: Compressed,
    decision: GateDecision,
    calibration: Calibration,
    benchmarks: dict[str, dict[str, float]],
    student: Checkpoint | None = None,
    behaviour: BehaviourReport | None = None,
) -> Path:
    """Prefect task: write the bundle under ``work_dir/bundles/<run id>`` and log it to MLflow."""
    run_id = tracking.pipeline_run_id()
    destination = config.work_dir.resolve() / "bundles" / run_id
    metrics = {
        "edge": decision.metrics,
        "cloud": benchmarks[compressed.cloud_name],
        "compress": compressed.info,
        "router": calibration.metrics,
    }
    if behaviour is not None:
        metrics["behaviour"] = behaviour.metrics
    lineage = {
        "data_digest": data.digest,
        "data_dir": str(data.directory),
        "git_commit": tracking.git_commit(),
        "mlflow_run_id": run_id,
        "base_model": config.model.base,
        "teacher_base_model": config.model.teacher_base,
        "quantization_recipe": decision.recipe.name,
        # Read by the service: a batch-dependent edge model answers each request in its own call.
        "batch_independent": decision.recipe.batch_independent,
        "edge_model": "student" if student is not None else "teacher_int8",
    }
    if config.cloud.backend != "local":  # what the router was calibrated against; never the key
        lineage |= {
            f"cloud_{field}": value
            for field, value in config.cloud.model_dump(mode="json").items()
            if field in ("backend", "url", "model", "constraint", "prompt", "examples_per_label")
            or field.startswith("price_")
        }
        # The form the LLM obeyed when it was probed, rather than ``auto``.
        lineage["cloud_constraint"] = calibration.settings.calibration.get("cloud", {}).get(
            "constraint", config.cloud.constraint
        )
    if student is not None:
        record = json.loads((student.path / STUDENT).read_text(encoding="utf-8"))
        lineage |= {
            "student_layers": record["layers"],
            "student_kept_layers": record["kept_layers"],
            "student_init": record["init"],
            "distill_alpha": record["alpha"],
            "distill_temperature": record["temperature"],
        }
    with tempfile.TemporaryDirectory() as scratch:
        profile = Path(scratch) / PROFILE
        profile.write_text(input_profile(config, data, decision, calibration), encoding="utf-8")
        write_bundle(
            destination,
            bundle_files(compressed, decision, calibration) | {PROFILE: profile},
            labels=data.labels,
            max_length=config.model.max_length,
            metrics=metrics,
            lineage=lineage,
        )
    _log_bundle(run_id, destination)
    # The bundle holds copies of what passed; the intermediate graphs of this run can go.
    shutil.rmtree(compressed.directory, ignore_errors=True)
    return destination


@task(name="recalibrated-bundle")
def recalibrated_bundle(
    config: PipelineConfig,
    data: PreparedData,
    source: Bundle,
    calibration: Calibration,
    model_uri: str,
) -> Path:
    """Prefect task: the source bundle with the new router.json, under ``work_dir/bundles/<run id>``."""
    run_id = tracking.pipeline_run_id()
    destination = config.work_dir.resolve() / "bundles" / run_id
    derive_bundle(
        source,
        destination,
        replace={ROUTER: calibration.router_json},
        metrics={"router": calibration.metrics},
        lineage={
            "recalibrated_from": model_uri,
            "calibration_data_digest": data.digest,
            "data_dir": str(data.directory),
            "mlflow_run_id": run_id,
            "git_commit": tracking.git_commit(),
        },
    )
    _log_bundle(run_id, destination)
    return destination


def _log_bundle(run_id: str, bundle: Path) -> None:
    """The bundle's manifest, and its signature when it is signed, as artifacts of the run."""
    for name in (MANIFEST, SIGNATURE):
        if (bundle / name).is_file():
            tracking.log_artifact(run_id, bundle / name, "bundle")
