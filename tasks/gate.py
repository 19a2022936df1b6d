"""The accuracy-retention and batch-independence gate, with an accuracy-aware fallback over
quantization recipes."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import pandas as pd
from prefect import task
from prefect.artifacts import create_markdown_artifact

from edgeroute.model import OnnxClassifier, load_tokenizer
from tasks.calibrate import Calibration
from tasks.compress import Compressed, Recipe, Variant, fallback_recipes, quantize, weight_nodes
from tasks.evaluate import benchmark
from tasks.support import markdown, tracking
from tasks.support.config import GateConfig, PipelineConfig
from tasks.support.dataset import PreparedData

Metrics = dict[str, float]


class GateFailed(RuntimeError):
    """No quantization recipe kept enough of the FP32 model; the message is the full report."""


@dataclass(frozen=True)
class Check:
    name: str
    value: float
    limit: float
    at_least: bool

    @property
    def passed(self) -> bool:
        return self.value >= self.limit if self.at_least else self.value <= self.limit

    def __str__(self) -> str:
        sign = ">=" if self.at_least else "<="
        return f"{self.name} {self.value:.4f} {sign} {self.limit:g}: {'pass' if self.passed else 'FAIL'}"


@dataclass(frozen=True)
class Attempt:
    recipe: Recipe
    metrics: Metrics
    checks: list[Check] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(check.passed for check in self.checks)

    @property
    def serves_alone(self) -> bool:
        """A batch-dependent recipe that passes every other check: it may serve one request at a time."""
        return not self.recipe.batch_independent and all(
            check.passed for check in self.checks if check.name not in BATCH_CHECKS
        )


BATCH_CHECKS = ("batch_label_agreement", "batch_max_probability_change")


def check(fp32: Metrics, int8: Metrics, settings: GateConfig) -> list[Check]:
    """INT8 against FP32: accuracy (and macro-F1) retention; the floors on INT8's own macro-F1
    and lowest class recall; the optional budgets; then one answer per text: the same label and
    nearly the same probabilities alone and batched."""
    checks = [
        Check(
            "accuracy_retention", int8["accuracy"] / fp32["accuracy"], settings.min_accuracy_retention, True
        )
    ]
    if settings.min_macro_f1_retention is not None:
        checks.append(
            Check(
                "macro_f1_retention",
                int8["macro_f1"] / fp32["macro_f1"],
                settings.min_macro_f1_retention,
                True,
            )
        )
    if settings.min_macro_f1 is not None:
        checks.append(Check("macro_f1", int8["macro_f1"], settings.min_macro_f1, True))
    if settings.min_class_recall is not None:
        checks.append(Check("min_class_recall", int8["min_class_recall"], settings.min_class_recall, True))
    if settings.max_size_mb is not None:
        checks.append(Check("size_mb", int8["size_mb"], settings.max_size_mb, False))
    if settings.max_p95_latency_ms is not None:
        checks.append(Check("p95_ms", int8["p95_ms"], settings.max_p95_latency_ms, False))
    return [
        *checks,
        Check("batch_label_agreement", int8["batch_label_agreement"], 1.0, True),
        Check(
            "batch_max_probability_change",
            int8["batch_max_probability_change"],
            settings.max_batch_probability_change,
            False,
        ),
    ]


def report(fp32: Metrics, attempts: list[Attempt], chosen: Attempt | None = None) -> str:
    """Markdown: the FP32 reference and every recipe tried, with its checks; for a batch-dependent
    choice, what serving it one request at a time costs."""
    lines = [
        "# Quantization gate",
        "",
        f"FP32 reference: accuracy {fp32['accuracy']:.4f}, macro-F1 {fp32['macro_f1']:.4f}, "
        f"{fp32['size_mb']:.1f} MB.",
        "",
        markdown.table(
            ["#", "recipe", "accuracy", "macro-F1", "size MB", "p95 ms", "result", "checks"],
            [[number, a.recipe.name, f"{a.metrics['accuracy']:.4f}", f"{a.metrics['macro_f1']:.4f}",
              f"{a.metrics['size_mb']:.1f}", f"{a.metrics['p95_ms']:.2f}", "pass" if a.passed else "FAIL",
              "; ".join(map(str, a.checks))] for number, a in enumerate(attempts, start=1)],
        ),
    ]  # fmt: skip
    if chosen is not None and not chosen.recipe.batch_independent:
        m = chosen.metrics
        lines += [
            "",
            f"No batch-independent recipe passed: **{chosen.recipe.name}** serves, one request a model "
            f"call (the service ignores `batching.max_texts` for it). Its batched throughput is "
            f"{m['throughput_per_s']:.0f} texts/s, one at a time about {1000 / m['p50_ms']:.0f} "
            "texts/s per worker.",
        ]
    return "\n".join(lines) + "\n"


def run_gate(
    fp32: Metrics,
    primary: Attempt,
    fallbacks: Callable[[], list[Recipe]],
    evaluate: Callable[[Recipe], Metrics],
    settings: GateConfig,
) -> tuple[Attempt, list[Attempt]]:
    """The primary recipe if it passes, else the first fallback that does (bounded); where none
    does, a batch-dependent recipe that passes all but the batch checks, to serve one request at
    a time.

    ``fallbacks`` is called only when the primary fails: measuring sensitivity costs time.
    """
    attempts = [primary]
    if not primary.passed:
        for recipe in fallbacks()[: settings.max_attempts - 1]:
            metrics = evaluate(recipe)
            attempts.append(Attempt(recipe, metrics, check(fp32, metrics, settings)))
            if attempts[-1].passed:
                break
    chosen = next((a for a in attempts if a.passed), None) or next(
        (a for a in attempts if a.serves_alone), None
    )
    if chosen is None:
        raise GateFailed(report(fp32, attempts))
    return chosen, attempts


def layer_sensitivity(
    compressed: Compressed, labels: list[str], max_length: int, validation: pd.DataFrame
) -> list[int]:
    """Encoder layers, most sensitive first: validation accuracy with only that layer left in FP32."""
    _, layers = weight_nodes(compressed.fused)
    tokenizer = load_tokenizer(compressed.variants["int8"].tokenizer, max_length)
    accuracy = {}
    for layer, nodes in layers.items():
        recipe = replace(compressed.recipe, name=f"layer {layer} in FP32", exclude=tuple(nodes))
        path = quantize(
            compressed.fused,
            compressed.directory / f"sensitivity-{layer}.onnx",
            recipe,
            compressed.calibration,
        )
        predicted = OnnxClassifier(path, tokenizer, labels, threads=2).predict(validation["text"].tolist())
        accuracy[layer] = float((pd.Series(predicted) == validation["label"].reset_index(drop=True)).mean())
    return sorted(layers, key=lambda layer: (-accuracy[layer], layer))


@dataclass(frozen=True)
class GateDecision:
    edge: Variant
    recipe: Recipe
    metrics: Metrics
    report: str


@task(name="gate")
def gate_model(
    config: PipelineConfig,
    data: PreparedData,
    compressed: Compressed,
    benchmarks: dict[str, Metrics],
) -> GateDecision:
    """Prefect task: pass INT8 through the gate or fail the flow with a report of every attempt."""
    fp32, settings = benchmarks["fp32"], config.gate
    int8 = compressed.variants["int8"]
    primary = Attempt(compressed.recipe, benchmarks["int8"], check(fp32, benchmarks["int8"], settings))
    test = data.frame("test")
    paths = {compressed.recipe: int8.model}

    def fallbacks() -> list[Recipe]:
        order = layer_sensitivity(compressed, data.labels, config.model.max_length, data.frame("validation"))
        return fallback_recipes(compressed.recipe, compressed.fused, order, settings.max_attempts - 1)

    def evaluate(recipe: Recipe) -> Metrics:
        path = quantize(
            compressed.fused,
            compressed.directory / f"int8-attempt-{len(paths)}.onnx",
            recipe,
            compressed.calibration,
        )
        paths[recipe] = path
        return benchmark(
            Variant(path, int8.tokenizer), data.labels, config.model.max_length, test, config.evaluate
        )

    with tracking.stage("gate", settings) as run_id:
        try:
            chosen, attempts = run_gate(fp32, primary, fallbacks, evaluate, settings)
        except GateFailed as failed:
            tracking.log_text(run_id, str(failed), "gate_report.md")
            create_markdown_artifact(key="gate-report", markdown=str(failed), description="Gate failed")
            raise
        text = report(fp32, attempts, chosen)
        tracking.log_text(run_id, text, "gate_report.md")
        tracking.log_metrics(
            run_id,
            {check_.name: check_.value for check_ in chosen.checks}
            | {"attempts": len(attempts), "batch_independent": float(chosen.recipe.batch_independent)},
        )
        tracking.set_tags(run_id, {"recipe": json.dumps(chosen.recipe.__dict__, default=list)})
    create_markdown_artifact(key="gate-report", markdown=text, description="Gate passed")
    return GateDecision(Variant(paths[chosen.recipe], int8.tokenizer), chosen.recipe, chosen.metrics, text)


def system_checks(router: Metrics, settings: GateConfig) -> list[Check]:
    """The routed system on the test split: what it keeps of cloud-only accuracy, and its edge share."""
    return [
        Check(
            "system_retention",
            router["test_accuracy"] / router["test_cloud_only_accuracy"],
            settings.min_system_retention,
            True,
        ),
        Check("edge_share", router["test_edge_share"], settings.min_edge_share, True),
    ]


def gap_recovered(router: Metrics) -> float:
    """The share of the edge-to-cloud accuracy gap the routed system closes (NaN without a gap)."""
    gap = router["test_cloud_only_accuracy"] - router["test_edge_only_accuracy"]
    return (router["test_accuracy"] - router["test_edge_only_accuracy"]) / gap if gap > 0 else float("nan")


def system_report(router: Metrics, checks: list[Check]) -> str:
    """Markdown: the three accuracies, the gap recovered, the edge share and cost, and each check."""
    m = router
    cells = [
        f"{m['test_edge_only_accuracy']:.4f}",
        f"{m['test_cloud_only_accuracy']:.4f}",
        f"{m['test_accuracy']:.4f}",
        f"{100 * gap_recovered(m):.1f} %",
        f"{100 * m['test_edge_share']:.1f} %",
        f"${m['test_cost_per_query']:.5f}",
        f"{100 * m['test_savings_vs_cloud_only']:.1f} %",
    ]
    verdict = "pass" if all(c.passed for c in checks) else "FAIL"
    lines = [
        "# System gate",
        "",
        f"The calibrated router on the test split: **{verdict}**.",
        "",
        markdown.table(
            ["edge only", "cloud only", "routed", "gap recovered", "edge share", "cost per query", "savings"],
            [cells],
        ),
        "",
        *(f"- {c}" for c in checks),
    ]
    return "\n".join(lines) + "\n"


@task(name="system-gate")
def system_gate(config: PipelineConfig, calibration: Calibration, quantization_report: str = "") -> str:
    """Prefect task: pass the calibrated routed system or fail the flow; the report (followed by
    the quantization gate's, when there was one) is the ``gate-report`` artifact."""
    checks = system_checks(calibration.metrics, config.gate)
    text = "\n".join(filter(None, [system_report(calibration.metrics, checks), quantization_report]))
    passed = all(c.passed for c in checks)
    params = config.gate.model_dump(include={"min_system_retention", "min_edge_share"})
    with tracking.stage("system-gate", params) as run_id:
        tracking.log_metrics(
            run_id,
            {c.name: c.value for c in checks}
            | {"gap_recovered": gap_recovered(calibration.metrics), "passed": float(passed)},
        )
        tracking.log_text(run_id, text, "gate_report.md")
        create_markdown_artifact(
            key="gate-report", markdown=text, description="System gate " + ("passed" if passed else "failed")
        )
        if not passed:
            raise GateFailed(text)
    return text
