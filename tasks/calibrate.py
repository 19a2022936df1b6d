"""Router calibration: the temperature, then the confidence threshold for a stated target.

On the calibration split: fit the temperature of the edge model's softmax (negative
log-likelihood), evaluate the runtime's own decision rule (`edgeroute.router.escalation_reasons`)
at every threshold of a grid fixed before any data is seen, and pick the threshold that meets the
target of `RouterConfig`; the cloud sees masked text, as in production. Then the calibrated
runtime `Router` is evaluated on the untouched test split.

The guarantee holds for the threshold picked, not only at each threshold alone (the thresholds
are searched, so per-threshold bounds would overstate it). ``max_edge_share_within`` is
Learn-then-Test (Angelopoulos, Bates, Candès, Jordan and Lei, "Learn then Test: Calibrating
Predictive Algorithms to Achieve Risk Control", 2021) with fixed-sequence testing (Bauer, 1991):
the risk is the share of queries answered on the edge and wrong where the cloud is right (it
bounds the accuracy the router gives up against cloud-only); each threshold's null hypothesis
"risk > tolerance" gets the exact binomial p-value ``P(Binomial(n, tolerance) <= harmful)``;
thresholds are tested from the most cautious down and the search stops at the first that is not
rejected at level ``delta``. With probability at least ``1 - delta`` over the calibration split,
the chosen threshold's risk is within the tolerance. ``edge_accuracy`` bounds the edge-answered
accuracy of every grid threshold at once (Clopper-Pearson at ``delta / len(grid)``, Bonferroni).

An LLM cloud is calibrated too: the temperature of its label distribution (`edgeroute.labelprob`)
is fitted on the same split, and router.json keeps it with the model, the constraint form the
server obeys and the few-shot examples it was shown, so that a service asking that model answers
with the same confidence.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from itertools import chain, zip_longest
from pathlib import Path

import numpy as np
import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from edgeroute.cloud import CloudBackend, LocalCloud, OpenAICloud, Prediction, remote_cloud
from edgeroute.model import OnnxClassifier, load_tokenizer, softmax
from edgeroute.privacy import mask
from edgeroute.router import (
    OPTIMAL_EDGE,
    Costs,
    Features,
    Router,
    RouterSettings,
    compute_features,
    escalation_reasons,
    summarize,
)
from tasks.compress import Variant
from tasks.support import tracking
from tasks.support.config import PipelineConfig, RouterConfig
from tasks.support.dataset import PreparedData

CURVE_COLUMNS = (
    "min_confidence", "edge_share", "system_accuracy", "harm_rate", "harm_p_value", "edge_accuracy",
    "edge_accuracy_lower", "cost_per_query",
)  # fmt: skip
# The thresholds tested, fixed in advance (Learn-then-Test needs a grid that does not depend on the
# calibration data): steps of 0.01, and finer towards 1 where confident models put most queries.
THRESHOLDS = np.unique(np.round(np.concatenate([np.linspace(0, 1, 101), 1 - np.logspace(-6, -2, 41)]), 10))
LTT = "Learn-then-Test, fixed-sequence, binomial p-values"
BONFERRONI = "Clopper-Pearson, Bonferroni over the grid"


def negative_log_likelihood(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    probabilities = softmax(logits.astype(np.float64), temperature)
    return -float(np.mean(np.log(probabilities[np.arange(len(labels)), labels] + 1e-12)))


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature that minimises the negative log-likelihood of ``labels``."""
    from scipy.optimize import minimize_scalar

    def nll(log_t: float) -> float:
        return negative_log_likelihood(logits, labels, float(np.exp(log_t)))

    return float(np.exp(minimize_scalar(nll, bounds=(-3.0, 3.0), method="bounded").x))


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """ECE: the gap between confidence and accuracy, averaged over equal-width confidence bins."""
    confidence = probabilities.max(axis=-1)
    correct = probabilities.argmax(axis=-1) == labels
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    gap = 0.0
    for b in range(bins):
        members = which == b
        if members.any():
            gap += members.mean() * abs(correct[members].mean() - confidence[members].mean())
    return float(gap)


def clopper_pearson_lower(successes: np.ndarray, trials: np.ndarray, delta: float) -> np.ndarray:
    """One-sided lower confidence bound (level ``1 - delta``) of a binomial proportion."""
    from scipy.stats import beta

    successes, trials = np.asarray(successes, dtype=float), np.asarray(trials, dtype=float)
    with np.errstate(invalid="ignore"):
        bound = beta.ppf(delta, successes, trials - successes + 1)
    return np.where(successes > 0, np.nan_to_num(bound), 0.0)


def binomial_p_value(harmful: np.ndarray, trials: int, tolerance: float) -> np.ndarray:
    """Exact p-value of "risk > tolerance" given ``harmful`` events in ``trials``: P(Bin(n, tol) <= k)."""
    from scipy.stats import binom

    return binom.cdf(np.asarray(harmful), trials, tolerance)


def sweep(
    features: Features,
    edge_correct: np.ndarray,
    cloud_correct: np.ndarray,
    settings: RouterSettings,
    config: RouterConfig,
) -> pd.DataFrame:
    """Edge share, system and edge accuracy, risk and cost per query at every grid threshold.

    ``harm_rate`` is the share of all queries answered on the edge and wrong where the cloud is
    right, with its p-value against ``config.tolerance``; ``edge_accuracy_lower`` the
    Clopper-Pearson bound of the edge-answered accuracy, at ``config.delta`` over the whole grid.
    """
    rows = []
    for threshold in THRESHOLDS:
        escalate = escalation_reasons(features, replace(settings, min_confidence=float(threshold)))
        on_edge = escalate == OPTIMAL_EDGE
        rows.append(
            {
                "min_confidence": float(threshold),
                "edge_share": on_edge.mean(),
                "system_accuracy": np.where(on_edge, edge_correct, cloud_correct).mean(),
                "harmful": int((on_edge & ~edge_correct & cloud_correct).sum()),
                "edge_accuracy": edge_correct[on_edge].mean() if on_edge.any() else np.nan,
                "edge_correct": int(edge_correct[on_edge].sum()),
                "edge_answered": int(on_edge.sum()),
                "cost_per_query": settings.costs.edge + (1 - on_edge.mean()) * settings.costs.cloud,
            }
        )
    curve = pd.DataFrame(rows)
    n = len(edge_correct)
    curve["harm_rate"] = curve["harmful"] / n
    curve["harm_p_value"] = binomial_p_value(curve["harmful"], n, config.tolerance)
    curve["edge_accuracy_lower"] = clopper_pearson_lower(
        curve["edge_correct"], curve["edge_answered"], config.delta / len(curve)
    )
    return curve[list(CURVE_COLUMNS)]


def fixed_sequence(p_values: np.ndarray, delta: float) -> int | None:
    """Fixed-sequence testing: the last index of the leading run of p-values <= ``delta``, or None."""
    rejected = np.cumprod(np.asarray(p_values) <= delta).astype(bool)
    return int(rejected.sum()) - 1 if rejected.any() else None


def choose(curve: pd.DataFrame, config: RouterConfig) -> tuple[pd.Series, bool]:
    """The curve row (ascending thresholds) that meets ``config.target`` with the largest edge
    share, and whether it could.

    When no threshold meets the target, the nearest one is returned with ``False``: for
    ``edge_share``, the largest share there is; otherwise the most cautious threshold.
    """
    if config.target == "edge_share":
        # Edge share falls as the threshold rises: the highest threshold that still keeps the share.
        feasible = curve["edge_share"] >= config.edge_share - 1e-12
        return (curve[feasible].iloc[-1], True) if feasible.any() else (curve.iloc[0], False)
    if config.target == "max_edge_share_within":
        # From the most cautious threshold down, as long as each null is rejected (Learn-then-Test).
        descending = curve.iloc[::-1]
        last = fixed_sequence(descending["harm_p_value"].to_numpy(), config.delta)
        return (descending.iloc[last], True) if last is not None else (curve.iloc[-1], False)
    # The bound holds for every grid threshold at once, so any that clears it may be picked.
    feasible = curve["edge_accuracy_lower"] >= config.edge_accuracy
    return (curve[feasible].iloc[0], True) if feasible.any() else (curve.iloc[-1], False)


def save_curve_png(curve: pd.DataFrame, chosen: pd.Series, cloud_accuracy: float, path: Path) -> None:
    """System accuracy and cost per query against edge share, the chosen point marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, accuracy_axis = plt.subplots(figsize=(7, 4.5))
    accuracy_axis.plot(curve["edge_share"], curve["system_accuracy"], label="system accuracy")
    accuracy_axis.axhline(cloud_accuracy, color="grey", linestyle="--", label="cloud only")
    accuracy_axis.scatter([chosen["edge_share"]], [chosen["system_accuracy"]], color="red", zorder=3)
    accuracy_axis.annotate(
        f"min confidence {chosen['min_confidence']:.3f}", (chosen["edge_share"], chosen["system_accuracy"]),
        textcoords="offset points", xytext=(-10, -18), ha="right",
    )  # fmt: skip
    accuracy_axis.set_xlabel("edge share")
    accuracy_axis.set_ylabel("accuracy")
    cost_axis = accuracy_axis.twinx()
    cost_axis.plot(curve["edge_share"], curve["cost_per_query"], color="tab:orange", label="cost per query")
    cost_axis.set_ylabel("dollars per query")
    fig.legend(loc="lower left", bbox_to_anchor=(0.12, 0.12))
    accuracy_axis.set_title("Router calibration (calibration split)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


@dataclass(frozen=True)
class Calibration:
    """A calibrated router: its settings file, curve, and figures on calibration and test data."""

    directory: Path
    settings: RouterSettings
    metrics: dict[str, float]
    router_json: Path


def cloud_answers(cloud: CloudBackend, texts: Sequence[str]) -> list[Prediction | None]:
    """The cloud model's answer to each text, seen masked as in production; None where it failed
    on the text (an LLM's refusal)."""
    return cloud.classify([mask(t) for t in texts])


def cloud_labels(cloud: CloudBackend, texts: Sequence[str]) -> list[str | None]:
    """The cloud model's label for each text (None where it failed on it)."""
    return [a.label if a is not None else None for a in cloud_answers(cloud, texts)]


def cloud_correct(cloud: CloudBackend, texts: list[str], labels: list[str]) -> np.ndarray:
    """Whether the cloud model is right on each text; a refusal counts as wrong."""
    return right(cloud_answers(cloud, texts), labels)


def right(answers: Sequence[Prediction | None], labels: Sequence[str]) -> np.ndarray:
    return np.array([a is not None and a.label == y for a, y in zip(answers, labels, strict=True)])


def llm_calibration(cloud: CloudBackend, answers: Sequence[Prediction | None], labels: Sequence[str]) -> dict:
    """What router.json keeps of an LLM cloud (nothing of another): its model, the constraint form
    it obeyed, its few-shot examples and, where its answers gave a distribution over the labels,
    the temperature that minimises the negative log-likelihood of the true labels, with the
    expected calibration error of its confidence before and after."""
    if not isinstance(cloud, OpenAICloud):
        return {}
    examples = [list(example) for example in cloud.examples]
    record = {"model": cloud.config.model, "constraint": cloud.form, "examples": examples}
    pairs = zip(answers, labels, strict=True)
    scored = [(a.scores, y) for a, y in pairs if a is not None and a.scores and len(a.scores) > 1]
    if not scored:
        return record
    # Log-masses as logits; a label no alternative showed has none (as `labelprob.confidence` reads it).
    logits = np.array([[scores.get(label, -1e4) for label in cloud.labels] for scores, _ in scored])
    truth = np.array([cloud.labels.index(y) for _, y in scored])
    temperature = fit_temperature(logits, truth)
    return record | {
        "temperature": temperature,
        "scored_answers": len(scored),
        "ece_before": expected_calibration_error(softmax(logits), truth),
        "ece_after": expected_calibration_error(softmax(logits, temperature), truth),
    }


def few_shot_examples(config: PipelineConfig, data: PreparedData) -> list[tuple[str, str]]:
    """``cloud.examples_per_label`` training messages a label, masked, drawn with the pipeline's
    seed, one of each label in turn (the last shown is not always the same label)."""
    per_label = config.cloud.examples_per_label
    if config.cloud.backend != "openai" or not per_label:
        return []
    train = data.frame("train")
    drawn = [
        list(zip(group["text"], group["label"], strict=True))
        for _, group in train.groupby("label", sort=True)
        .sample(frac=1.0, random_state=config.seed)
        .groupby("label", sort=True)
    ]
    rounds = zip_longest(*(examples[:per_label] for examples in drawn))
    return [(mask(text), label) for text, label in chain.from_iterable(rounds) if text is not None]


def calibrate(
    edge: OnnxClassifier, cloud: CloudBackend, frame: pd.DataFrame, config: RouterConfig, directory: Path
) -> Calibration:
    """Fit the temperature and the threshold on ``frame``; write router.json and the curve."""
    texts, labels = frame["text"].tolist(), frame["label"].tolist()
    truth = np.array([edge.labels.index(y) for y in labels])
    logits, tokens = edge.logits_and_tokens(texts)
    temperature = fit_temperature(logits, truth)
    settings = RouterSettings(
        temperature=temperature,
        max_complexity=config.max_complexity,
        max_unfamiliar_share=config.max_unfamiliar_share,
        shadow_rate=config.shadow_rate,
        costs=Costs(edge=config.edge_cost, cloud=config.cloud_cost),
    )
    features = compute_features(texts, logits, tokens, settings)
    edge_correct = features.label == truth
    answers = cloud_answers(cloud, texts)
    cloud_right = right(answers, labels)
    llm = llm_calibration(cloud, answers, labels)
    curve = sweep(features, edge_correct, cloud_right, settings, config)
    chosen, met = choose(curve, config)
    target = {"target": config.target} | {
        "max_edge_share_within": {"tolerance": config.tolerance, "delta": config.delta, "method": LTT},
        "edge_share": {"edge_share": config.edge_share},
        "edge_accuracy": {"edge_accuracy": config.edge_accuracy, "delta": config.delta, "method": BONFERRONI},
    }[config.target]
    settings = replace(
        settings,
        min_confidence=float(chosen["min_confidence"]),
        calibration=target
        | {"target_met": met, "calibration_rows": len(texts)}
        | ({"cloud": llm} if llm else {}),
    )
    metrics = {
        "temperature": temperature,
        "ece_before": expected_calibration_error(softmax(logits), truth),
        "ece_after": expected_calibration_error(softmax(logits, temperature), truth),
        "nll_before": negative_log_likelihood(logits, truth),
        "nll_after": negative_log_likelihood(logits, truth, temperature),
        "min_confidence": settings.min_confidence,
        "target_met": float(met),
    } | {f"calibration_{k}": float(chosen[k]) for k in CURVE_COLUMNS if k != "min_confidence"}
    metrics["calibration_cloud_only_accuracy"] = float(cloud_right.mean())
    fitted = ("temperature", "ece_before", "ece_after")
    metrics |= {f"cloud_{k}": float(v) for k, v in llm.items() if k in fitted}
    directory.mkdir(parents=True, exist_ok=True)
    router_json = directory / "router.json"
    router_json.write_text(settings.to_json(), encoding="utf-8")
    curve.to_csv(directory / "router_curve.csv", index=False)
    save_curve_png(curve, chosen, float(cloud_right.mean()), directory / "router_curve.png")
    return Calibration(directory, settings, metrics, router_json)


def evaluate(router: Router, frame: pd.DataFrame) -> dict[str, float]:
    """The routed system on labelled data, against cloud-only and edge-only."""
    texts, labels = frame["text"].tolist(), frame["label"].tolist()
    decisions = router.route(texts)
    summary = summarize(decisions, router.settings.costs, labels)
    edge_only = np.mean([d.edge_label == y for d, y in zip(decisions, labels, strict=True)])
    cloud_only = cloud_correct(router.cloud, texts, labels).mean() if router.cloud else np.nan
    reasons = summary.pop("reasons")
    return (
        {k: float(v) for k, v in summary.items()}
        | {"edge_only_accuracy": float(edge_only), "cloud_only_accuracy": float(cloud_only)}
        | {f"reason.{reason}": float(count) for reason, count in reasons.items()}
    )


def edge_and_cloud(
    edge: Variant, cloud: Variant, labels: list[str], max_length: int
) -> tuple[OnnxClassifier, LocalCloud]:
    """The INT8 edge model and the FP32 cloud model, as the runtime loads them."""
    return (
        OnnxClassifier(edge.model, load_tokenizer(edge.tokenizer, max_length), labels),
        LocalCloud(OnnxClassifier(cloud.model, load_tokenizer(cloud.tokenizer, max_length), labels)),
    )


def cloud_tier(config: PipelineConfig, local: CloudBackend, data: PreparedData) -> CloudBackend:
    """The cloud the router is calibrated against: the bundle's FP32 model (``local``), or the
    ``cloud`` section's remote backend, as in production, its answers cached on disk (an LLM's
    prompt with its few-shot examples from the training split)."""
    if config.cloud.backend == "local":
        return local
    return remote_cloud(config.cloud_cached, data.labels, few_shot_examples(config, data))


@task(name="calibrate-router", cache_policy=NO_CACHE)
def calibrate_router(
    config: PipelineConfig,
    data: PreparedData,
    edge: OnnxClassifier,
    cloud: CloudBackend,
) -> Calibration:
    """Prefect task: calibrate on the calibration split, evaluate on the test split, log both."""
    directory = config.work_dir.resolve() / "calibrate" / tracking.pipeline_run_id()
    with tracking.stage("calibrate", config.router) as run_id:
        calibration = calibrate(edge, cloud, data.frame("calibration"), config.router, directory)
        test = evaluate(Router(edge, cloud, calibration.settings), data.frame("test"))
        metrics = calibration.metrics | {f"test_{k}": v for k, v in test.items()}
        tracking.log_metrics(run_id, metrics)
        for name in ("router.json", "router_curve.csv", "router_curve.png"):
            tracking.log_artifact(run_id, directory / name)
    return replace(calibration, metrics=metrics)
