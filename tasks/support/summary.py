"""The run summary a person reads: compression, retention, latency, router split, cost, promotion.

Published as the Prefect markdown artifact ``training-summary`` and as ``summary.md`` on the
MLflow pipeline run; ``edgeroute train`` (and so ``make demo``) prints the same text.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact

from tasks.support import markdown, tracking

Metrics = dict[str, float]


# Benchmark columns in the order a reader compares them: the cloud tier, the edge model without
# distillation, the student before quantization, then the INT8 model served at the edge.
COLUMNS = {
    "teacher_fp32": "teacher FP32 (cloud tier)",
    "teacher_int8": "teacher INT8 (no distillation)",
    "fp32": "FP32",
    "edge": "INT8 (edge tier)",
}


def models(benchmarks: dict[str, Metrics], edge: Metrics) -> dict[str, Metrics]:
    """The summary's model columns: each benchmarked model, with ``edge`` the INT8 model that passed
    the gate. Without distillation ``fp32`` is the teacher and the cloud tier."""
    names = ("teacher_fp32", "teacher_int8", "fp32")
    return {name: benchmarks[name] for name in names if name in benchmarks} | {"edge": edge}


def cloud_tier(columns: dict[str, Metrics]) -> Metrics:
    """The cloud tier's benchmark: the teacher's FP32 model."""
    return columns.get("teacher_fp32", columns["fp32"])


def headline(
    classifier: Metrics, columns: dict[str, Metrics], router: Metrics, promotion: dict[str, Any]
) -> dict[str, str]:
    """The figures of the summary as short strings, for the CLI and the flow's return value."""
    cloud, fp32, edge = cloud_tier(columns), columns["fp32"], columns["edge"]
    return {
        "test_accuracy": f"{classifier['test_accuracy']:.4f}",
        "test_macro_f1": f"{classifier['test_macro_f1']:.4f}",
        "tfidf_test_accuracy": f"{classifier['baseline_tfidf_test_accuracy']:.4f}",
        "edge_accuracy": f"{edge['accuracy']:.4f}",
        "int8_size_reduction": f"{100 * (1 - edge['size_mb'] / cloud['size_mb']):.1f} %",
        "int8_accuracy_kept": f"{100 * edge['accuracy'] / fp32['accuracy']:.2f} %",
        "edge_accuracy_vs_cloud": f"{100 * edge['accuracy'] / cloud['accuracy']:.2f} %",
        "p50_ms_cloud_edge": f"{cloud['p50_ms']:.2f} / {edge['p50_ms']:.2f}",
        "router_edge_share": f"{100 * router['test_edge_share']:.1f} %",
        "router_accuracy": f"{router['test_accuracy']:.4f}",
        "cloud_only_accuracy": f"{router['test_cloud_only_accuracy']:.4f}",
        "router_savings": f"{100 * router['test_savings_vs_cloud_only']:.1f} % vs cloud only",
        "promoted": "yes" if promotion["promoted"] else "no",
    }


def _relative(model: Metrics, cloud: Metrics, key: str, what: str) -> str:
    """`` (N % smaller)`` or `` (N % kept)`` against the cloud tier; nothing for the cloud tier itself."""
    if model is cloud:
        return ""
    share = model[key] / cloud[key]
    return f" ({100 * (1 - share if what == 'smaller' else share):.1f} % {what})"


def model_table(columns: dict[str, Metrics], student_layers: int | None) -> str:
    """One column per model: size, accuracy, macro-F1, latency, throughput."""
    cloud = cloud_tier(columns)
    names = dict(COLUMNS)
    if student_layers is not None:
        layers = f"{student_layers} layer{'s' if student_layers > 1 else ''}"
        names |= {"fp32": f"student FP32 ({layers})", "edge": "student INT8 (edge tier)"}
    else:
        names["fp32"] = "FP32 (cloud tier)"
    cells = {
        "size": lambda m: f"{m['size_mb']:.2f} MB" + _relative(m, cloud, "size_mb", "smaller"),
        "accuracy": lambda m: f"{m['accuracy']:.4f}" + _relative(m, cloud, "accuracy", "kept"),
        "macro-F1": lambda m: f"{m['macro_f1']:.4f}",
        "p50 / p95 latency (1 thread)": lambda m: f"{m['p50_ms']:.2f} / {m['p95_ms']:.2f} ms",
        "throughput": lambda m: f"{m['throughput_per_s']:.0f} msg/s",
    }
    return markdown.table(
        ["", *(names[n] for n in columns)],
        [[row, *map(cell, columns.values())] for row, cell in cells.items()],
    )


def to_markdown(
    run_name: str,
    classifier: Metrics,
    columns: dict[str, Metrics],
    student_layers: int | None,
    router: Metrics,
    calibration: dict[str, Any],
    registered: Any,
    promotion: dict[str, Any],
    behaviour: str | None = None,
) -> str:
    """The summary; ``behaviour``: the behavioural checks' table, when they ran."""
    fp32, edge = columns["fp32"], columns["edge"]
    kept = 100 * edge["accuracy"] / fp32["accuracy"]
    params = ", ".join(
        f"{k} {v}"
        for k, v in calibration.items()
        if k not in {"target", "target_met", "calibration_rows", "method"}
    )
    met = "met" if calibration["target_met"] else "NOT met"
    method = f" by {calibration['method']}" if "method" in calibration else ""
    target = f"`{calibration['target']}` ({params}; {met}{method} on the calibration split)"
    outcome = (
        f"**promoted to champion** ({promotion['reason']})"
        if promotion["promoted"]
        else f"**not promoted**: champion stays v{promotion['champion']} ({promotion['reason']})"
    )
    tier = "Teacher (cloud tier)" if student_layers is not None else "Classifier"
    checks = (
        f"\n## Behavioural checks (worst failure rate of each kind)\n{behaviour}\n"
        if behaviour is not None
        else ""
    )
    return f"""# Training run `{run_name}`

{tier} on the test split: accuracy **{classifier["test_accuracy"]:.4f}**, macro-F1 \
{classifier["test_macro_f1"]:.4f} (TF-IDF baseline {classifier["baseline_tfidf_test_accuracy"]:.4f}). \
The INT8 edge model keeps **{kept:.2f} %** of its FP32 accuracy (percentages below: of the cloud tier).

{model_table(columns, student_layers)}

## Router (test split)
Target: {target}; temperature {router["temperature"]:.3f}, \
minimum edge confidence {router["min_confidence"]:.3f}.

| edge share | system accuracy | cloud only | edge only | cost per query | savings vs cloud only |
|---|---|---|---|---|---|
| **{100 * router["test_edge_share"]:.1f} %** | {router["test_accuracy"]:.4f} | \
{router["test_cloud_only_accuracy"]:.4f} | {router["test_edge_only_accuracy"]:.4f} | \
${router["test_cost_per_query"]:.5f} | **{100 * router["test_savings_vs_cloud_only"]:.1f} %** |
{checks}
## Registry
`{registered.name}` version {registered.version} (alias `challenger`): {outcome}.
"""


@task(name="summarize-run")
def summarize_run(
    config: Any,
    run_name: str,
    *,
    data: Any,
    adapted: Any,
    classifier: Any,
    student: Any,
    benchmarks: dict[str, Metrics],
    decision: Any,
    calibration: Any,
    behaviour: Any,
    bundle: Path,
    registered: Any,
    promotion: dict[str, Any],
) -> dict[str, str]:
    """Prefect task: each stage's figures on the pipeline run, the summary (the ``training-summary``
    markdown artifact and ``summary.md``), and the flow's outputs with the summary under ``summary``."""
    run_id = tracking.pipeline_run_id()
    for checkpoint in filter(None, (adapted, classifier, student)):
        tracking.log_stage_summary(
            run_id, checkpoint.stage, checkpoint.metrics,
            {"checkpoint": checkpoint.path, "mlflow_run_id": checkpoint.mlflow_run_id},
        )  # fmt: skip
    columns = models(benchmarks, decision.metrics)
    tracking.log_stage_summary(run_id, "edge", decision.metrics, {"recipe": decision.recipe.name})
    tracking.log_stage_summary(run_id, "cloud", cloud_tier(columns), {"bundle": bundle})
    tracking.log_stage_summary(run_id, "router", calibration.metrics, {"router": calibration.router_json})
    if behaviour is not None:
        tracking.log_stage_summary(run_id, "behaviour", behaviour.metrics, {})
    tracking.set_tags(run_id, {"registered_version": registered.version, "promoted": promotion["promoted"]})
    markdown = to_markdown(
        run_name, classifier.metrics, columns, config.distill.layers if student is not None else None,
        calibration.metrics, calibration.settings.calibration, registered, promotion,
        behaviour.summary(config.behaviour.max_failure_rate) if behaviour is not None else None,
    )  # fmt: skip
    create_markdown_artifact(key="training-summary", markdown=markdown, description="Training run summary")
    tracking.log_text(run_id, markdown, "summary.md")
    return {
        "mlflow_run_id": run_id,
        "mlflow_experiment": config.tracking.experiment,
        "tracking_uri": tracking.tracking_uri(),
        "data_dir": str(data.directory),
        "data_digest": data.digest,
        "dapt_checkpoint": str(adapted.path),
        "classifier_checkpoint": str(classifier.path),
        **({"student_checkpoint": str(student.path)} if student is not None else {}),
        **headline(classifier.metrics, columns, calibration.metrics, promotion),
        "bundle": str(bundle),
        "registered_model": f"models:/{registered.name}/{registered.version}",
        "champion": f"models:/{registered.name}@champion",
        "summary": markdown,
    }
