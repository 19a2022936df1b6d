"""The run summary: its model columns, the cloud tier, and the figures it prints."""

from __future__ import annotations

from types import SimpleNamespace

from tasks.support import summary


def metrics(accuracy: float, size_mb: float, p50_ms: float) -> dict[str, float]:
    latency = {"p50_ms": p50_ms, "p95_ms": 2 * p50_ms, "throughput_per_s": 1000 / p50_ms}
    return {"accuracy": accuracy, "macro_f1": accuracy, "size_mb": size_mb} | latency


BENCHMARKS = {
    "teacher_fp32": metrics(0.97, 90.0, 10.0),
    "teacher_int8": metrics(0.96, 23.0, 4.0),
    "fp32": metrics(0.975, 45.0, 5.0),
    "int8": metrics(0.9, 12.0, 2.0),
}
EDGE = metrics(0.972, 6.0, 2.0)
ROUTER = {
    "temperature": 1.2, "min_confidence": 0.8, "test_edge_share": 0.9, "test_accuracy": 0.974,
    "test_cloud_only_accuracy": 0.97, "test_edge_only_accuracy": 0.972, "test_cost_per_query": 0.002,
    "test_savings_vs_cloud_only": 0.85,
}  # fmt: skip
CLASSIFIER = {"test_accuracy": 0.97, "test_macro_f1": 0.96, "baseline_tfidf_test_accuracy": 0.8}


def test_columns_put_the_gated_model_at_the_edge_and_the_teacher_in_the_cloud():
    columns = summary.models(BENCHMARKS, EDGE)
    assert list(columns) == ["teacher_fp32", "teacher_int8", "fp32", "edge"]
    assert columns["edge"] is EDGE and summary.cloud_tier(columns) is BENCHMARKS["teacher_fp32"]
    undistilled = summary.models({"fp32": BENCHMARKS["fp32"]}, EDGE)
    assert summary.cloud_tier(undistilled) is BENCHMARKS["fp32"]


def test_headline_figures_are_relative_to_the_cloud_tier():
    columns = summary.models(BENCHMARKS, EDGE)
    figures = summary.headline(CLASSIFIER, columns, ROUTER, {"promoted": True})
    assert figures["int8_size_reduction"] == "93.3 %"  # 6 MB against the teacher's 90 MB
    assert figures["int8_accuracy_kept"] == "99.69 %"  # of the student's own FP32 accuracy
    assert figures["edge_accuracy_vs_cloud"] == "100.21 %"
    assert figures["router_edge_share"] == "90.0 %" and figures["promoted"] == "yes"


def test_markdown_names_the_tiers_the_router_and_the_registry_outcome():
    columns = summary.models(BENCHMARKS, EDGE)
    calibration = {"target": "max_edge_share_within", "tolerance": 0.01, "target_met": False}
    registered = SimpleNamespace(name="edgeroute", version="4")
    kept = {"promoted": False, "champion": "3", "reason": "worse"}
    text = summary.to_markdown("run-1", CLASSIFIER, columns, 3, ROUTER, calibration, registered, kept)
    assert text.startswith("# Training run `run-1`\n\nTeacher (cloud tier) on the test split")
    assert "tolerance 0.01; NOT met" in text and "| **90.0 %** | 0.9740 |" in text
    assert "**not promoted**: champion stays v3 (worse)" in text
    assert (
        "| | teacher FP32 (cloud tier) | teacher INT8 (no distillation) | student FP32 (3 layers) |" in text
    )
    assert "| size | 90.00 MB | 23.00 MB (74.4 % smaller) |" in text and "| throughput | 100 msg/s |" in text
    undistilled = summary.to_markdown(
        "run-2", CLASSIFIER, columns, None, ROUTER, calibration, registered, kept
    )
    assert "\n\nClassifier on the test split" in undistilled
