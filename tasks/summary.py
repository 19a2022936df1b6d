"""The run summary a person reads: compression, retention, latency, router split, cost, promotion.

Published as the Prefect markdown artifact ``training-summary`` and as ``summary.md`` on the
MLflow pipeline run; ``edgeroute train`` (and so ``make demo``) prints the same text.
"""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact

from tasks import tracking

Metrics = dict[str, float]


def headline(
    classifier: Metrics, fp32: Metrics, int8: Metrics, router: Metrics, promotion: dict[str, Any]
) -> dict[str, str]:
    """The figures of the summary as short strings, for the CLI and the flow's return value."""
    return {
        "test_accuracy": f"{classifier['test_accuracy']:.4f}",
        "test_macro_f1": f"{classifier['test_macro_f1']:.4f}",
        "tfidf_test_accuracy": f"{classifier['baseline_tfidf_test_accuracy']:.4f}",
        "int8_size_reduction": f"{100 * (1 - int8['size_mb'] / fp32['size_mb']):.1f} %",
        "int8_accuracy_kept": f"{100 * int8['accuracy'] / fp32['accuracy']:.2f} %",
        "p50_ms_fp32_int8": f"{fp32['p50_ms']:.2f} / {int8['p50_ms']:.2f}",
        "router_edge_share": f"{100 * router['test_edge_share']:.1f} %",
        "router_accuracy": f"{router['test_accuracy']:.4f}",
        "cloud_only_accuracy": f"{router['test_cloud_only_accuracy']:.4f}",
        "router_savings": f"{100 * router['test_savings_vs_cloud_only']:.1f} % vs cloud only",
        "promoted": "yes" if promotion["promoted"] else "no",
    }


def to_markdown(
    run_name: str,
    classifier: Metrics,
    fp32: Metrics,
    int8: Metrics,
    router: Metrics,
    calibration: dict[str, Any],
    registered: Any,
    promotion: dict[str, Any],
) -> str:
    kept = 100 * int8["accuracy"] / fp32["accuracy"]
    smaller = 100 * (1 - int8["size_mb"] / fp32["size_mb"])
    params = ", ".join(
        f"{k} {v}" for k, v in calibration.items() if k not in {"target", "target_met", "calibration_rows"}
    )
    met = "met" if calibration["target_met"] else "NOT met"
    target = f"`{calibration['target']}` ({params}; {met} on the calibration split)"
    outcome = (
        f"**promoted to champion** ({promotion['reason']})"
        if promotion["promoted"]
        else f"**not promoted**: champion stays v{promotion['champion']} ({promotion['reason']})"
    )
    return f"""# Training run `{run_name}`

Classifier on the test split: accuracy **{classifier["test_accuracy"]:.4f}**, macro-F1 \
{classifier["test_macro_f1"]:.4f} (TF-IDF baseline {classifier["baseline_tfidf_test_accuracy"]:.4f}).

| | FP32 (cloud tier) | INT8 (edge tier) |
|---|---|---|
| size | {fp32["size_mb"]:.2f} MB | {int8["size_mb"]:.2f} MB (**{smaller:.1f} % smaller**) |
| accuracy | {fp32["accuracy"]:.4f} | {int8["accuracy"]:.4f} (**{kept:.2f} % kept**) |
| macro-F1 | {fp32["macro_f1"]:.4f} | {int8["macro_f1"]:.4f} |
| p50 / p95 latency (1 thread) | {fp32["p50_ms"]:.2f} / {fp32["p95_ms"]:.2f} ms | \
{int8["p50_ms"]:.2f} / {int8["p95_ms"]:.2f} ms |
| throughput | {fp32["throughput_per_s"]:.0f} msg/s | {int8["throughput_per_s"]:.0f} msg/s |

## Router (test split)
Target: {target}; temperature {router["temperature"]:.3f}, \
minimum edge confidence {router["min_confidence"]:.3f}.

| edge share | system accuracy | cloud only | edge only | cost per query | savings vs cloud only |
|---|---|---|---|---|---|
| **{100 * router["test_edge_share"]:.1f} %** | {router["test_accuracy"]:.4f} | \
{router["test_cloud_only_accuracy"]:.4f} | {router["test_edge_only_accuracy"]:.4f} | \
${router["test_cost_per_query"]:.5f} | **{100 * router["test_savings_vs_cloud_only"]:.1f} %** |

## Registry
`{registered.name}` version {registered.version} (alias `challenger`): {outcome}.
"""


@task(name="publish-summary")
def publish_summary(parent_run_id: str, markdown: str) -> None:
    """Prefect task: the summary as a markdown artifact and on the MLflow pipeline run."""
    create_markdown_artifact(key="training-summary", markdown=markdown, description="Training run summary")
    tracking.log_text(parent_run_id, markdown, "summary.md")
