"""The model card: the description of every registered version, in markdown, as the MLflow UI
shows it: what the model is for, its data, the test metrics of the edge model, the cloud tier
and the routed system, the gates it passed, the router, its provenance and its limits.

Every figure is read from the bundle's manifest (and the gate runs, and the prepared data while
it is on disk) defensively: a section whose figures are missing is left out, never printed as
"None".
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow.exceptions import MlflowException

from edgeroute.bundle import Bundle, BundleError
from tasks.support import markdown, tracking
from tasks.support.dataset import PreparedData
from tasks.support.markdown import code

# MLflow keeps a version's description in a VARCHAR(5000) on SQL stores (PostgreSQL refuses more).
DESCRIPTION_LIMIT = 5000
GATE_STAGES = ("gate", "system-gate")
BEHAVIOUR_KINDS = {"invariance": "invariance", "direction": "direction", "mft": "minimum functionality"}
TIERS = ("edge", "cloud", "system")


def bundle_data(bundle: Bundle) -> PreparedData | None:
    """The prepared data the bundle was trained on, through its lineage, while it is on disk."""
    data_dir = (bundle.manifest.get("lineage") or {}).get("data_dir")
    if not data_dir or not (Path(data_dir) / "data.json").is_file():
        return None
    try:
        return PreparedData.load(Path(data_dir))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def gate_figures(pipeline_run_id: str | None) -> dict[str, float]:
    """What the gates measured and required (``accuracy_retention``, ``min_accuracy_retention``,
    ``size_mb``, ``system_retention``...): the metrics and params of the gate stages' runs under
    the pipeline run that wrote the bundle; empty when there are none."""
    if not pipeline_run_id:
        return {}
    client = tracking.client()
    try:
        parent = client.get_run(pipeline_run_id)
        runs = client.search_runs(
            [parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{pipeline_run_id}'"
        )
    except MlflowException:
        return {}
    figures: dict[str, float] = {}
    for run in runs:
        if run.data.tags.get("stage") in GATE_STAGES:
            for key, value in (run.data.params | run.data.metrics).items():
                if (number := finite(value)) is not None:
                    figures[key] = number
    return figures


def finite(value: Any) -> float | None:
    """A finite number, or None: missing, NaN, infinite, or no number at all (the param "None")."""
    if value is None or isinstance(value, bool):
        return None if value is None else float(value)
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _show(value: Any, pattern: str = "{:.4f}") -> str | None:
    number = finite(value)
    return None if number is None else pattern.format(number)


def _percent(share: Any) -> str | None:
    number = finite(share)
    return None if number is None else f"{100 * number:.1f} %"


def _ratio(numerator: Any, denominator: Any) -> float | None:
    top, bottom = finite(numerator), finite(denominator)
    return top / bottom if top is not None and bottom else None


def _first(*values: Any) -> float | None:
    """The first finite number of ``values``."""
    return next((n for n in map(finite, values) if n is not None), None)


def _table(header: Sequence[str], rows: Iterable[Sequence[str | None]]) -> list[str]:
    """A markdown table of the rows with a figure in them; nothing when no row has one."""
    kept = [row for row in rows if any(cell is not None for cell in row[1:])]
    return [*markdown.table(header, kept).splitlines(), ""] if kept else []


def _bullets(items: Mapping[str, str | None]) -> list[str]:
    lines = [f"- **{key}**: {value}" for key, value in items.items() if value]
    return [*lines, ""] if lines else []


def _section(title: str, lines: list[str]) -> list[str]:
    return [f"### {title}", "", *lines] if lines else []


@dataclass(frozen=True)
class _Card:
    """A manifest's figures, read defensively: every section is empty where its keys are missing."""

    labels: list[str]
    edge: dict[str, Any]
    cloud: dict[str, Any]
    router: dict[str, Any]
    compress: dict[str, Any]
    behaviour: dict[str, Any]
    lineage: dict[str, Any]
    calibration: dict[str, Any]
    data: PreparedData | None
    gate: dict[str, float]

    @classmethod
    def of(cls, bundle: Bundle, data: PreparedData | None, gate: Mapping[str, float] | None) -> _Card:
        manifest = bundle.manifest
        metrics = manifest.get("metrics") or {}
        sections = (dict(metrics.get(k) or {}) for k in ("edge", "cloud", "router", "compress", "behaviour"))
        try:
            calibration = dict(bundle.router_settings().calibration)
        except (BundleError, OSError, ValueError, TypeError):
            calibration = {}
        labels = [str(label) for label in manifest.get("labels") or (data.labels if data else [])]
        lineage = dict(manifest.get("lineage") or {})
        return cls(labels, *sections, lineage, calibration, data, dict(gate or {}))

    @property
    def source(self) -> str | None:
        return self.data.source if self.data is not None else None

    @property
    def remote_cloud(self) -> bool:
        return self.lineage.get("cloud_backend") not in (None, "local")

    @property
    def cloud_tier(self) -> str:
        if not self.remote_cloud:
            return "the bundle's FP32 model"
        return " ".join(
            f"`{self.lineage[k]}`" for k in ("cloud_backend", "cloud_model") if self.lineage.get(k)
        )

    @property
    def edge_accuracy(self) -> float | None:
        return _first(self.edge.get("accuracy"), self.router.get("test_edge_only_accuracy"))

    @property
    def cloud_accuracy(self) -> float | None:
        """The cloud FP32 model's; the router's cloud-only accuracy is that model's only when local."""
        local = None if self.remote_cloud else self.router.get("test_cloud_only_accuracy")
        return _first(self.cloud.get("accuracy"), local)

    @property
    def edge_size(self) -> float | None:
        return _first(self.edge.get("size_mb"), self.compress.get("int8_size_mb"))


def _card_head(card: _Card) -> list[str]:
    return [
        "## Model card",
        "",
        f"An edge/cloud text classifier over {len(card.labels)} labels: an INT8 edge model answers the "
        f"messages it is confident about and escalates the rest to the cloud tier ({card.cloud_tier}), "
        "the confidence threshold between them calibrated on held-out data.",
        "",
        "### Intended use",
        "",
        "Classifying customer-support messages into the labels of its training data"
        + (f" (`{card.source}`)" if card.source else "")
        + ", at the edge first, for routing and triage where a person can re-route a message. "
        "Live accuracy comes from feedback (`GET /v1/health`).",
        "",
    ]


def _production_line(counts: Mapping[str, int]) -> str | None:
    """The production rows of the training split by source, and those left out (`data.production`)."""
    if not counts:
        return None
    return (
        f"{counts['feedback']:,} rows labelled by feedback, {counts['cloud']:,} by the cloud (train "
        f"{counts['to_train']:,}, validation {counts['to_validation']:,}, calibration "
        f"{counts['to_calibration']:,}); {counts['holdout']:,} held out; left out: "
        f"{counts['in_test_split']:,} in the test split, {counts['edge_only']:,} answered on the edge "
        "without feedback"
    )


def _card_data(card: _Card) -> list[str]:
    data, rows, cloud_labelled = card.data, None, None
    if data is not None:
        rows = f"{data.rows_read:,} read, {data.duplicates_removed:,} duplicates removed"
        if data.conflicting_duplicates:
            rows += f" ({data.conflicting_duplicates:,} with conflicting labels)"
        rows += f", {data.truncated:,} truncated" if data.truncated else ""
        if data.cloud_labels:
            report = data.cloud_labels
            by = " ".join(str(report[k]) for k in ("backend", "model") if report.get(k))
            cloud_labelled = f"{report.get('labelled', '?')} rows by {by or 'the cloud tier'}"
            cloud_labelled += f", {report['dropped']} dropped" if report.get("dropped") else ""
    digest = data.digest if data is not None else card.lineage.get("data_digest")
    splits = data.split_counts if data is not None else {}
    lines = _bullets(
        {
            "source": f"`{card.source}`" if card.source else None,
            "digest": f"`{digest}`" if digest else None,
            "rows": rows,
            "splits": " · ".join(f"{split} {count:,}" for split, count in splits.items()) or None,
            "labelled by the cloud tier": cloud_labelled,
            "learnt from production": _production_line(data.production) if data is not None else None,
        }
    )
    return ["### Data", "", *lines]


def _card_labels(card: _Card, budget: int | None) -> list[str]:
    """The labels, with their share of the prepared data when known: a table when they are few
    and it fits ``budget`` characters, else one line, cut short with a count of the rest."""
    counts = dict(card.data.class_counts) if card.data is not None else {}
    total = sum(counts.values())
    labels = sorted(card.labels, key=lambda label: (-counts.get(label, 0), label)) if total else card.labels

    def share(label: str) -> str:
        return f" {100 * counts[label] / total:.1f} %" if total and label in counts else ""

    title = f"**Labels** ({len(labels)}" + (", share of the data):" if total else "):")
    if total and len(labels) <= 20:
        rows = [[code(label), f"{counts.get(label, 0):,}", share(label).strip() or None] for label in labels]
        table = [title, "", *_table(("label", "rows", "share"), rows)]
        if budget is None or len("\n".join(table)) < budget:
            return table
    items = [f"{code(label)}{share(label)}" for label in labels]
    kept = items
    while budget is not None and kept and len(title) + len(", ".join(kept)) + 24 > budget:
        kept = kept[: len(kept) * 9 // 10]
    line = ", ".join(kept) + (f", … and {len(items) - len(kept)} more" if len(kept) < len(items) else "")
    return [title, line, ""]


def _card_scores(card: _Card) -> list[str]:
    edge, cloud, router = card.edge, card.cloud, card.router
    queries = _first(router.get("test_queries"), (card.data.split_counts if card.data else {}).get("test"))
    first = "test split" + (f" ({queries:,.0f} messages)" if queries else "")
    cloud_size = _first(cloud.get("size_mb"), card.compress.get("teacher_fp32_size_mb"))
    rows = [
        ["accuracy", _show(card.edge_accuracy), _show(card.cloud_accuracy),
         _show(router.get("test_accuracy"))],
        ["macro-F1", _show(edge.get("macro_f1")), _show(cloud.get("macro_f1")), None],
        ["p95 latency, one query (ms)", _show(edge.get("p95_ms"), "{:.2f}"),
         _show(cloud.get("p95_ms"), "{:.2f}"), None],
        ["size (MB)", _show(card.edge_size, "{:.2f}"), _show(cloud_size, "{:.2f}"), None],
        ["cost per query ($)", None, _show(router.get("test_cloud_only_cost_per_query"), "{:.5f}"),
         _show(router.get("test_cost_per_query"), "{:.5f}")],
    ]  # fmt: skip
    return _section("Test metrics", _table((first, "edge INT8", "cloud FP32", "routed system"), rows))


def _card_gates(card: _Card) -> list[str]:
    gate, router = card.gate, card.router

    def required(key: str, sign: str) -> str | None:
        return f"{sign} {gate[key]:g}" if finite(gate.get(key)) is not None else None

    retention = finite(gate.get("accuracy_retention"))
    if retention is None and card.lineage.get("edge_model") == "teacher_int8":
        retention = _ratio(card.edge_accuracy, card.cloud_accuracy)  # the cloud model is the edge's FP32
    system = _first(
        gate.get("system_retention"),
        _ratio(router.get("test_accuracy"), router.get("test_cloud_only_accuracy")),
    )
    size = _show(card.edge_size, "{:.2f}")
    reduction = finite(card.compress.get("size_reduction_vs_cloud_pct"))
    if size is not None and reduction is not None:
        size += f" ({reduction:.1f} % smaller than the cloud model)"
    p95 = _show(gate.get("p95_ms"), "{:.2f}") if "max_p95_latency_ms" in gate else None
    share = _percent(router.get("test_edge_share")) if finite(gate.get("min_edge_share")) else None
    rows = [
        [
            "accuracy retention (edge INT8 / its FP32)",
            _show(retention),
            required("min_accuracy_retention", "≥"),
        ],
        [
            "macro-F1 retention",
            _show(gate.get("macro_f1_retention")),
            required("min_macro_f1_retention", "≥"),
        ],
        ["edge accuracy / cloud accuracy", _show(_ratio(card.edge_accuracy, card.cloud_accuracy)), None],
        ["edge size (MB)", size, required("max_size_mb", "≤")],
        ["edge p95 latency (ms)", p95, required("max_p95_latency_ms", "≤")],
        ["system retention (routed / cloud only)", _show(system), required("min_system_retention", "≥")],
        ["edge share (test)", share, required("min_edge_share", "≥") if share else None],
    ]
    if all(row[2] is None for row in rows):  # what the gates required is not known here
        return _section("Gates", _table(("gate", "measured"), [row[:2] for row in rows]))
    return _section("Gates", _table(("gate", "measured", "required"), rows))


def _card_router(card: _Card) -> list[str]:
    router, calibration = card.router, card.calibration
    accuracy = " · ".join(
        f"{what} {value:.4f}"
        for what, key in (("routed", "test_accuracy"), ("cloud only", "test_cloud_only_accuracy"),
                          ("edge only", "test_edge_only_accuracy"))
        if (value := finite(router.get(key))) is not None
    )  # fmt: skip
    target = None
    if calibration.get("target"):
        settings = ", ".join(
            f"{key} {calibration[key]:g}"
            for key in ("tolerance", "delta", "edge_share", "edge_accuracy")
            if finite(calibration.get(key)) is not None
        )
        target = f"target `{calibration['target']}`" + (f" ({settings})" if settings else "")
        target += f", {calibration['method']}" if calibration.get("method") else ""
        met = calibration.get("target_met", router.get("target_met"))
        target += f"; met: {'yes' if met else 'no'}" if met is not None else ""
        rows = finite(calibration.get("calibration_rows"))
        target += f"; {rows:,.0f} calibration messages" if rows else ""
    threshold = _show(router.get("min_confidence"), "min confidence {:.4f}")
    if threshold and finite(router.get("temperature")):
        threshold += f", temperature {router['temperature']:.3f}"
    if (
        threshold
        and finite(router.get("ece_before")) is not None
        and finite(router.get("ece_after")) is not None
    ):
        threshold += f" (ECE {router['ece_before']:.3f} → {router['ece_after']:.3f})"
    reasons = ", ".join(
        f"{key.removeprefix('test_reason.')} {value:,.0f}"
        for key, value in router.items()
        if key.startswith("test_reason.") and finite(value)
    )
    items = {
        "edge share (test)": _percent(router.get("test_edge_share")),
        "accuracy (test)": accuracy or None,
        "savings vs cloud only": _percent(router.get("test_savings_vs_cloud_only")),
        "calibration": target,
        "thresholds": threshold,
        "where the test messages went, and why": reasons or None,
    }
    return _section("Router", _bullets(items))


def _card_provenance(card: _Card) -> list[str]:
    lineage, compress = card.lineage, card.compress
    edge_model = None
    if lineage.get("student_layers") is not None:
        edge_model = f"a {lineage['student_layers']}-layer student distilled from the teacher"
        details = [
            f"{what} {lineage[key]}"
            for what, key in (("layers kept", "student_kept_layers"), ("init", "student_init"),
                              ("alpha", "distill_alpha"), ("temperature", "distill_temperature"))
            if lineage.get(key) is not None
        ]  # fmt: skip
        edge_model += f" ({', '.join(details)})" if details else ""
    elif lineage.get("edge_model") == "teacher_int8":
        edge_model = "the teacher itself, quantized to INT8 (no distillation)"
    quantization = (
        f"recipe `{lineage['quantization_recipe']}`" if lineage.get("quantization_recipe") else None
    )
    if quantization and finite(compress.get("quantized_ops")):
        quantization += f", {compress['quantized_ops']:.0f} ops quantized"
    if quantization and finite(compress.get("vocab_kept")) and finite(compress.get("vocab_original")):
        quantization += (
            f"; vocabulary trimmed {compress['vocab_original']:,.0f} → {compress['vocab_kept']:,.0f}"
        )
    bases = ", ".join(
        f"{what} `{lineage[key]}`"
        for what, key in (("edge", "base_model"), ("teacher", "teacher_base_model"))
        if lineage.get(key)
    )

    def code(key: str) -> str | None:
        return f"`{lineage[key]}`" if lineage.get(key) else None

    items = {
        "edge model": edge_model,
        "quantization": quantization,
        "base models": bases or None,
        "cloud tier": card.cloud_tier if card.remote_cloud else None,
        "recalibrated from": code("recalibrated_from"),
        "git commit": code("git_commit"),
        "MLflow run": code("mlflow_run_id"),
    }
    return _section("Provenance of the edge model", _bullets(items))


def _card_limits(card: _Card) -> list[str]:
    domain = f"`{card.source}`" if card.source else "its training data"
    lines = [
        f"- **Language and domain**: those of {domain}. Messages in another language, domain or "
        "style are out of scope: nothing here measures them, and only the router's complexity "
        "and unfamiliar-word checks may send them to the cloud.",
        f"- **Labels are fixed**: every message gets one of the {len(card.labels)} labels, even one "
        "that fits none; a new label means retraining.",
        "- **Cloud tier masking**: escalated messages reach the cloud tier with personal data "
        "masked (`<ENTITY>` placeholders), so it answers a message's shape, not its numbers, "
        "names or addresses. The routed accuracy leans on that tier: another cloud model voids "
        "the calibration.",
        "- **Offline figures**: measured on a held-out split of the same data, not on live traffic.",
        "",
    ]
    behaviour = card.behaviour
    kinds = [k for k in BEHAVIOUR_KINDS if any(f"{tier}.{k}" in behaviour for tier in TIERS)]
    rows = [[BEHAVIOUR_KINDS[k], *(_show(behaviour.get(f"{t}.{k}"), "{:.3f}") for t in TIERS)] for k in kinds]
    table = _table(("behavioural check: worst failure rate", *TIERS), rows)
    if table:
        passed = finite(behaviour.get("passed"))
        verdict = "" if passed is None else f" (the behaviour gate {'passed' if passed else 'failed'})"
        lines += [f"Behavioural checks (CheckList) on perturbed test messages{verdict}:", "", *table]
    return _section("Limits", lines)


def model_card(
    bundle: Bundle,
    data: PreparedData | None = None,
    gate: Mapping[str, float] | None = None,
    limit: int | None = DESCRIPTION_LIMIT,
) -> str:
    """The model card of a bundle, as markdown: intended use, data, the test metrics of the edge
    model, the cloud model and the routed system, the gates, the router, provenance and limits.

    From the manifest, with ``data`` (the prepared data of its lineage) for the data card and
    ``gate`` (`gate_figures`, what the gates measured and required); what they lack is left
    out. At most ``limit`` characters: a long label list is cut short first.
    """
    card = _Card.of(bundle, data, gate)
    before = [*_card_head(card), *_card_data(card)]
    after = [
        *_card_scores(card),
        *_card_gates(card),
        *_card_router(card),
        *_card_provenance(card),
        *_card_limits(card),
    ]
    budget = None if limit is None else limit - len("\n".join([*before, *after])) - 2
    text = "\n".join([*before, *_card_labels(card, budget), *after]).rstrip() + "\n"
    if limit is not None and len(text) > limit:
        cut = "\n\n… (cut short: the whole card is `model_card.md` of the register run)\n"
        text = text[: limit - len(cut)] + cut
    return text
