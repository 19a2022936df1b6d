"""The retention and batch-independence gate and its accuracy-aware fallback."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.compress import Recipe
from tasks.gate import (
    Attempt,
    GateFailed,
    check,
    gap_recovered,
    report,
    run_gate,
    system_checks,
    system_report,
)
from tasks.support.config import GateConfig

FP32 = {"accuracy": 0.90, "macro_f1": 0.88, "size_mb": 90.0, "p95_ms": 5.0}


def _metrics(
    accuracy: float, macro_f1: float = 0.88, size_mb: float = 22.0, p95_ms: float = 1.5, moved: float = 0.0
) -> dict:
    """A recipe's figures; ``moved``: the largest probability change batching makes."""
    return {
        "accuracy": accuracy,
        "macro_f1": macro_f1,
        "min_class_recall": 0.8,
        "size_mb": size_mb,
        "p95_ms": p95_ms,
        "p50_ms": 1.0,
        "throughput_per_s": 2500.0,
        "batch_label_agreement": 1.0 if moved < 0.1 else 0.98,
        "batch_max_probability_change": moved,
    }


def _checks(metrics, **settings):
    return {c.name: c.passed for c in check(FP32, metrics, GateConfig(**settings))}


def test_retention_is_a_ratio_with_a_configurable_floor():
    assert _checks(_metrics(0.891)) == {
        "accuracy_retention": True,
        "macro_f1_retention": True,
        "macro_f1": True,
        "min_class_recall": True,
        "batch_label_agreement": True,
        "batch_max_probability_change": True,
    }
    assert _checks(_metrics(0.890))["accuracy_retention"] is False  # 0.9889 < 0.99
    assert _checks(_metrics(0.880), min_accuracy_retention=0.97)["accuracy_retention"] is True
    assert _checks(_metrics(0.9, macro_f1=0.80))["macro_f1_retention"] is False
    assert "macro_f1_retention" not in _checks(_metrics(0.9), min_macro_f1_retention=None)


def test_a_model_that_only_answers_the_majority_class_fails_the_floors_whatever_it_retains():
    majority = {"accuracy": 0.96, "macro_f1": 0.33, "size_mb": 90.0, "p95_ms": 5.0}  # FP32 as bad
    int8 = _metrics(0.96, macro_f1=0.33) | {"min_class_recall": 0.0}
    checks = {c.name: c.passed for c in check(majority, int8, GateConfig())}
    assert checks["accuracy_retention"] and checks["macro_f1_retention"]
    assert checks["macro_f1"] is False and checks["min_class_recall"] is False
    assert "macro_f1" not in _checks(int8, min_macro_f1=None, min_class_recall=None)


def test_size_and_latency_budgets():
    checks = _checks(_metrics(0.9, size_mb=30.0, p95_ms=2.5), max_size_mb=25.0, max_p95_latency_ms=3.0)
    assert checks["size_mb"] is False and checks["p95_ms"] is True


def _gate(results: dict[str, dict], settings: GateConfig):
    """Run the gate with quantization outcomes given per recipe; record what was tried."""
    tried: list[str] = []
    primary = Recipe("primary", True, True)
    fallbacks = [Recipe("per_channel=False", False, True), Recipe("head in FP32", True, True, ("h",)),
                 Recipe("head and layer 0 in FP32", True, True, ("h", "l0"))]  # fmt: skip

    def evaluate(recipe):
        tried.append(recipe.name)
        return results[recipe.name]

    first = Attempt(primary, results["primary"], check(FP32, results["primary"], settings))
    return run_gate(FP32, first, lambda: fallbacks, evaluate, settings), tried


def test_a_passing_primary_tries_nothing_else():
    (chosen, attempts), tried = _gate({"primary": _metrics(0.9)}, GateConfig())
    assert chosen.recipe.name == "primary" and len(attempts) == 1 and tried == []


def test_the_fallback_keeps_the_first_recipe_that_passes():
    results = {
        "primary": _metrics(0.85),
        "per_channel=False": _metrics(0.86),
        "head in FP32": _metrics(0.895),
        "head and layer 0 in FP32": _metrics(0.9),
    }
    (chosen, attempts), tried = _gate(results, GateConfig())
    assert chosen.recipe.name == "head in FP32"
    assert tried == ["per_channel=False", "head in FP32"]
    assert [a.passed for a in attempts] == [False, False, True]


def test_when_nothing_passes_the_report_lists_every_attempt():
    results = {name: _metrics(0.80) for name in ("primary", "per_channel=False", "head in FP32")}
    with pytest.raises(GateFailed) as failed:
        _gate(results, GateConfig(max_attempts=3))
    text = str(failed.value)
    assert "FP32 reference: accuracy 0.9000" in text
    for number, name in enumerate(["primary", "per_channel=False", "head in FP32"], start=1):
        assert f"| {number} | {name} | 0.8000 |" in text
    assert "head and layer 0" not in text  # bounded by max_attempts
    assert text.count("accuracy_retention 0.8889 >= 0.99: FAIL") == 3


def test_a_recipe_whose_answers_move_with_their_batch_mates_fails():
    checks = _checks(_metrics(0.9, moved=0.002))
    assert checks["batch_max_probability_change"] is False and checks["batch_label_agreement"] is True
    assert _checks(_metrics(0.9, moved=0.002), max_batch_probability_change=0.01)[
        "batch_max_probability_change"
    ]
    assert _checks(_metrics(0.9, moved=0.2))["batch_label_agreement"] is False


def test_a_batch_dependent_recipe_serves_alone_only_when_no_independent_one_passes():
    dynamic = Recipe("dynamic", True, True, static=False)
    fallbacks = [Recipe("static, entropy calibration", True, True, calibration="entropy"), dynamic]
    settings = GateConfig()

    def gate(results):
        first = Attempt(
            Recipe("primary", True, True), results["primary"], check(FP32, results["primary"], settings)
        )
        return run_gate(FP32, first, lambda: fallbacks, lambda recipe: results[recipe.name], settings)

    results = {
        "primary": _metrics(0.85),
        "static, entropy calibration": _metrics(0.86),
        "dynamic": _metrics(0.9, moved=0.2),
    }
    chosen, attempts = gate(results)
    assert chosen.recipe is dynamic and chosen.serves_alone and not chosen.passed
    text = report(FP32, attempts, chosen)
    assert "**dynamic** serves, one request a model call" in text and "2500 texts/s" in text
    # A static recipe that passes wins, and the report has no such line.
    chosen, attempts = gate(results | {"static, entropy calibration": _metrics(0.9)})
    assert chosen.recipe.name == "static, entropy calibration" and chosen.passed
    assert "one request a model call" not in report(FP32, attempts, chosen)
    # A batch-dependent recipe that also fails accuracy fails the gate.
    with pytest.raises(GateFailed):
        gate(results | {"dynamic": _metrics(0.85, moved=0.2)})


ROUTED = {
    "test_accuracy": 0.955,
    "test_cloud_only_accuracy": 0.97,
    "test_edge_only_accuracy": 0.90,
    "test_edge_share": 0.85,
    "test_cost_per_query": 0.003,
    "test_savings_vs_cloud_only": 0.78,
}


def test_the_system_gate_compares_the_routed_system_with_cloud_only():
    checks = {c.name: c for c in system_checks(ROUTED, GateConfig())}
    assert checks["system_retention"].value == pytest.approx(0.955 / 0.97)
    assert not checks["system_retention"].passed  # 0.9845 < 0.99
    assert checks["edge_share"].passed  # reported only by default
    assert all(c.passed for c in system_checks(ROUTED, GateConfig(min_system_retention=0.98)))
    assert not {c.name: c.passed for c in system_checks(ROUTED, GateConfig(min_edge_share=0.9))}["edge_share"]


def test_the_system_report_names_the_figures_and_the_gap_recovered():
    assert gap_recovered(ROUTED) == pytest.approx((0.955 - 0.90) / (0.97 - 0.90))
    report = system_report(ROUTED, system_checks(ROUTED, GateConfig()))
    assert "**FAIL**" in report and "| 0.9000 | 0.9700 | 0.9550 | 78.6 % | 85.0 % |" in report
    assert "system_retention 0.9845 >= 0.99: FAIL" in report
    assert np.isnan(gap_recovered(ROUTED | {"test_edge_only_accuracy": 0.97}))
