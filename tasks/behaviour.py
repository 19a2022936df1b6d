"""Behavioural checks of the edge model, the cloud tier and the routed system (CheckList, Ribeiro
et al., 2020; Made-With-ML's ``tests/model/test_behavioral.py``), after the gates, before the registry.

Three kinds of check, each a failure rate over its cases:

- **invariance**: a change that must not move the label: personal data inserted (a name, an
  e-mail address, an account number, a masked placeholder), the digits replaced, the personal
  data masked as the cloud sees it, typos, lower case, trailing punctuation;
- **direction** (labels that include ``positive`` and ``negative``): an escalation phrase never
  moves a message towards positive, thanks never towards negative (negative < neutral <
  positive; a case counts where the model's own label leaves room to move that way);
- **mft** (minimum functionality): short cases with a known label, generated for the sentiment
  labels and read from ``behaviour.cases_path`` for any, one check per expected label.

Invariance and direction perturb ``behaviour.samples`` test-split messages. The cloud tier sees
every text masked, as in production. ``behaviour.max_failure_rate`` caps each kind's worst check
for the edge model and the routed system, what the bundle serves; the cloud tier's rates are
reported (an external LLM is not this pipeline's to fix, and where it answers, the system's rates
include it).
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import pandas as pd
from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from edgeroute.cloud import CloudBackend
from edgeroute.model import OnnxClassifier
from edgeroute.privacy import mask
from edgeroute.router import Router, RouterSettings, chunks
from edgeroute.tables import TableError, read_messages, rows_phrase
from tasks.calibrate import cloud_labels
from tasks.gate import Check, GateFailed
from tasks.support import markdown, tracking
from tasks.support.config import BehaviourConfig, BehaviourLimits, PipelineConfig
from tasks.support.dataset import PreparedData
from tasks.support.markdown import code
from tasks.support.synthetic import add_typos

KINDS = ("invariance", "direction", "mft")
GATED = ("edge", "system")  # what the bundle serves; the cloud tier is reported
RANK = {"negative": -1, "neutral": 0, "positive": 1}

NAMES = ("Priya Raman", "Tom Becker", "Ana Souza", "Kenji Mori", "Grace Okafor", "Luca Bianchi")
DOMAINS = ("example.org", "mailbox.test", "inbox.example")
PLACEHOLDERS = (
    "My card is <CREDIT_CARD>.", "Call me on <PHONE_NUMBER>.", "My e-mail is <EMAIL_ADDRESS>.",
    "The account is <ACCOUNT_NUMBER>.", "My name is <PERSON>.",
)  # fmt: skip
ESCALATION = (
    "This is unacceptable.", "Worst service ever.", "I want to speak to a manager.",
    "I'm filing a formal complaint.", "Absolutely ridiculous.", "I'm fed up with this.",
)  # fmt: skip
THANKS = (
    "Thank you so much for your help!", "Thanks, I really appreciate it.",
    "You've been brilliant, thank you.", "Many thanks to your team.", "Thanks a lot, that's great.",
)  # fmt: skip
# Minimum functionality for sentiment: plain greetings and questions are neutral; clear praise and
# clear complaints are what they say.
FILLERS = {
    "product": ("laptop", "headphones", "coffee machine", "phone", "printer"),
    "agent": ("Sam", "Maria", "Olu"),
    "plan": ("Premium", "Family"),
    "country": ("Canada", "Spain", "Japan"),
}
MFT_TEMPLATES = {
    "neutral": (
        "Hello, I have a quick question about my recent purchase.",
        "Hi, what are your opening hours?",
        "Can you tell me how to update the address on my account?",
        "I'd like to know when my {product} will be delivered.",
        "Good morning, where can I find the invoice for my last order?",
        "Hi there, do you ship to {country}?",
        "Could you send me the terms and conditions of the {plan} plan?",
        "Hello, I'm writing to ask about the {plan} plan.",
        "Is it possible to change my delivery date?",
        "Dear support, please confirm you received my documents.",
        "Hi {agent}, what is the warranty on the {product}?",
        "Hello.",
    ),
    "positive": (
        "Thank you so much, the {product} arrived early and works perfectly.",
        "Great service, {agent} fixed my problem in minutes.",
        "I'm really happy with the {plan} plan, thanks!",
        "The refund came through today, thank you for sorting it out.",
        "Brilliant support, I'll recommend you to my friends.",
        "Everything works now, I really appreciate your help.",
    ),
    "negative": (
        "This is unacceptable, I was charged twice and nobody has replied.",
        "My {product} arrived broken and I'm very disappointed.",
        "Worst service ever, I've been waiting three weeks for my refund.",
        "I'm furious, my account was locked again for no reason.",
        "Nobody answers the phone and my order never arrived.",
        "Your app keeps crashing and I've lost all my data.",
    ),
}
EXAMPLES = 3  # failed cases shown per check in the report, masked

Predict = Callable[[list[str]], list[str | None]]


class BehaviourFailed(GateFailed):
    """The edge model or the routed system failed a behavioural check; the message is the report."""


def _append(text: str, sentence: str) -> str:
    return f"{text} {sentence}" if text.rstrip()[-1:] in ".!?" else f"{text}. {sentence}"


def _email(rng: random.Random) -> str:
    return f"{rng.choice(NAMES).split()[0].lower()}{rng.randint(1, 99)}@{rng.choice(DOMAINS)}"


def _replace_digits(rng: random.Random, text: str) -> str | None:
    if not re.search(r"\d", text):
        return None
    return re.sub(r"\d", lambda _: str(rng.randrange(10)), text)


def _punctuation(text: str) -> str:
    stripped = text.rstrip(".!?")
    return stripped if stripped != text else text + "."


# Invariance: name -> (rng, text) -> the changed text, or None where the change does not apply.
Perturbation = Callable[[random.Random, str], str | None]
INVARIANCE: dict[str, Perturbation] = {
    "name": lambda rng, t: _append(t, f"My name is {rng.choice(NAMES)}."),
    "email": lambda rng, t: _append(t, f"You can reach me at {_email(rng)}."),
    "account": lambda rng, t: _append(t, f"My account number is {rng.randint(10**7, 10**10 - 1)}."),
    "placeholder": lambda rng, t: _append(t, rng.choice(PLACEHOLDERS)),
    "numbers": _replace_digits,
    "masked": lambda rng, t: mask(t),
    "typos": lambda rng, t: add_typos(rng, t, 0.15),
    "lowercase": lambda rng, t: t.lower(),
    "punctuation": lambda rng, t: _punctuation(t),
}
# Direction: name -> (the phrases appended, the rank change that fails: +1 towards positive).
DIRECTION = {"escalation": (ESCALATION, 1), "thanks": (THANKS, -1)}


@dataclass(frozen=True)
class Case:
    """One case of a check: ``original`` is an index into the base texts (invariance, direction)
    or None, with ``expected`` the label (mft)."""

    text: str
    original: int | None = None
    expected: str | None = None


@dataclass(frozen=True)
class BehaviourCheck:
    kind: str
    name: str
    cases: list[Case]
    forbidden: int = 0  # direction: the rank change that fails

    @property
    def key(self) -> str:
        return f"{self.kind}.{self.name}"

    def failed(self, base: Sequence[str | None], predicted: Sequence[str | None]) -> list[bool | None]:
        """Per case: failed, passed, or None where the case does not apply to this model."""
        if self.kind == "mft":
            return [p != c.expected for c, p in zip(self.cases, predicted, strict=True)]
        if self.kind == "invariance":
            return [p != base[c.original] for c, p in zip(self.cases, predicted, strict=True)]
        outcomes: list[bool | None] = []
        for case, label in zip(self.cases, predicted, strict=True):
            before = RANK.get(base[case.original])
            after = RANK.get(label)
            # Only where the model's own label leaves room to move the forbidden way, and the
            # new one is on the scale (not a refusal).
            if before is None or before == self.forbidden or after is None:
                outcomes.append(None)
            else:
                outcomes.append((after - before) * self.forbidden > 0)
        return outcomes


@dataclass(frozen=True)
class Outcome:
    cases: int
    failures: int
    examples: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.failures / self.cases if self.cases else 0.0


@dataclass(frozen=True)
class BehaviourReport:
    """Each check's outcome per model (``edge``, ``cloud``, ``system``), and the gate's checks."""

    outcomes: dict[str, dict[str, Outcome]]  # check key -> model -> outcome
    checks: list[Check]
    report: str

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def metrics(self) -> dict[str, float]:
        """``<model>.<kind>.<check>`` failure rates, each kind's worst as ``<model>.<kind>``."""
        metrics: dict[str, float] = {}
        for key, by_model in self.outcomes.items():
            for model, outcome in by_model.items():
                metrics[f"{model}.{key}"] = outcome.rate
                kind = f"{model}.{key.split('.')[0]}"
                metrics[kind] = max(metrics.get(kind, 0.0), outcome.rate)
        return metrics | {"passed": float(self.passed)}

    def summary(self, limits: BehaviourLimits) -> str:
        """Markdown for the run summary: each kind's worst failure rate per model, and its limit."""
        models = list(next(iter(self.outcomes.values())))
        metrics = self.metrics
        rows = [
            [kind, *(f"{metrics[f'{m}.{kind}']:.3f}" for m in models), f"{getattr(limits, kind):g}"]
            for kind in KINDS
            if f"{models[0]}.{kind}" in metrics
        ]
        return markdown.table(["kind", *models, "limit (edge, system)"], rows)


def is_sentiment(labels: Sequence[str]) -> bool:
    """Whether the labels have a direction: direction checks and generated cases need both poles."""
    return {"positive", "negative"} <= set(labels)


def read_cases(config: BehaviourConfig, labels: Sequence[str]) -> list[tuple[str, str]]:
    """``behaviour.cases_path`` as (text, expected label) pairs, each label one of ``labels``."""
    if config.cases_path is None:
        return []
    texts, expected = read_messages(config.cases_path, "text", "label")
    unknown = [i for i, label in enumerate(expected) if label not in labels]
    if unknown:
        raise TableError(
            f"{config.cases_path}: {rows_phrase(unknown)}, column 'label': {expected[unknown[0]]!r} is not "
            f"one of the task's labels ({', '.join(labels)}) (behaviour.cases_path)"
        )
    return list(zip(texts, expected, strict=True))


def mft_cases(labels: Sequence[str], cases: Sequence[tuple[str, str]], seed: int) -> dict[str, list[Case]]:
    """Minimum-functionality cases by expected label: the sentiment templates for the sentiment
    labels the task has, each filled twice, then the user's cases."""
    rng = random.Random(seed)
    by_label: dict[str, list[Case]] = {}
    generated = MFT_TEMPLATES.items() if is_sentiment(labels) else ()
    for label, templates in generated:
        if label in labels:
            fill = [{k: rng.choice(v) for k, v in FILLERS.items()} for _ in range(2)]
            texts = {template.format(**slots) for template in templates for slots in fill}
            by_label[label] = [Case(text, expected=label) for text in sorted(texts)]
    for text, label in cases:
        by_label.setdefault(label, []).append(Case(text, expected=label))
    return by_label


def build_checks(
    base: Sequence[str], labels: Sequence[str], cases: Sequence[tuple[str, str]], seed: int
) -> list[BehaviourCheck]:
    """Every check of the suite on the ``base`` texts, reproducibly from ``seed``."""
    checks = []
    for name, perturb in INVARIANCE.items():
        rng = random.Random(f"{seed}-{name}")
        changed = [(i, perturb(rng, text)) for i, text in enumerate(base)]
        items = [Case(new, original=i) for i, new in changed if new is not None and new != base[i]]
        checks.append(BehaviourCheck("invariance", name, items))
    if is_sentiment(labels):
        for name, (phrases, forbidden) in DIRECTION.items():
            rng = random.Random(f"{seed}-{name}")
            items = [Case(_append(text, rng.choice(phrases)), original=i) for i, text in enumerate(base)]
            checks.append(BehaviourCheck("direction", name, items, forbidden))
    for label, items in mft_cases(labels, cases, seed).items():
        checks.append(BehaviourCheck("mft", label, items))
    return checks


def _example(case: Case, before: str | None, after: str | None) -> str:
    """A failed case for the report, masked and shortened: no raw personal data in an artifact."""
    shown = mask(case.text)
    shown = shown if len(shown) <= 160 else shown[:157] + "..."
    was = case.expected if case.original is None else before
    return f"{code(repr(shown))}: {code(was)} -> {code(after)}"


def run_suite(
    models: dict[str, Predict], base: Sequence[str], checks: Sequence[BehaviourCheck]
) -> dict[str, dict[str, Outcome]]:
    """Each check's outcome for each model, one prediction call a model."""
    texts = list(base) + [case.text for check in checks for case in check.cases]
    outcomes: dict[str, dict[str, Outcome]] = {check.key: {} for check in checks}
    for model, predict in models.items():
        predicted = [label for chunk in chunks(texts) for label in predict(chunk)]
        originals, start = predicted[: len(base)], len(base)
        for check in checks:
            answers = predicted[start : start + len(check.cases)]
            start += len(check.cases)
            failed = check.failed(originals, answers)
            examples = [
                _example(c, None if c.original is None else originals[c.original], a)
                for c, a, f in zip(check.cases, answers, failed, strict=True)
                if f
            ][:EXAMPLES]
            applied = [f for f in failed if f is not None]
            outcomes[check.key][model] = Outcome(len(applied), sum(applied), examples)
    return outcomes


def gate_checks(outcomes: dict[str, dict[str, Outcome]], limits: BehaviourLimits) -> list[Check]:
    """The worst check of each kind, for each served model, against its limit."""
    checks = []
    for model in GATED:
        for kind in KINDS:
            rates = [by_model[model].rate for key, by_model in outcomes.items() if key.startswith(kind + ".")]
            if rates:
                checks.append(Check(f"{model}.{kind}", max(rates), getattr(limits, kind), False))
    return checks


def report(outcomes: dict[str, dict[str, Outcome]], checks: list[Check]) -> str:
    """Markdown: each check's failure rate per model, the gate's verdict, failed examples of the system."""
    models = list(next(iter(outcomes.values())))
    verdict = "pass" if all(c.passed for c in checks) else "FAIL"
    lines = [
        "# Behavioural checks",
        "",
        f"Failure rates (failed / cases): **{verdict}**.",
        "",
        markdown.table(
            ["check", *models],
            [[code(key), *(f"{o.rate:.3f} ({o.failures}/{o.cases})" for o in by_model.values())]
             for key, by_model in outcomes.items()],
        ),
    ]  # fmt: skip
    lines += ["", *(f"- {c}" for c in checks)]
    failed = {key: by_model["system"] for key, by_model in outcomes.items() if by_model["system"].failures}
    if failed:
        lines += ["", "## Failed cases of the routed system (masked)", ""]
        lines += [f"- {code(key)}: " + "; ".join(outcome.examples) for key, outcome in failed.items()]
    return "\n".join(lines) + "\n"


def evaluate(
    edge: OnnxClassifier,
    cloud: CloudBackend,
    settings: RouterSettings,
    base: Sequence[str],
    cases: Sequence[tuple[str, str]],
    config: BehaviourConfig,
    seed: int,
) -> BehaviourReport:
    """The suite on the edge model, the cloud tier and the routed system, with the gate's checks."""
    router = Router(edge, cloud, settings)
    models: dict[str, Predict] = {
        "edge": edge.predict,
        "cloud": lambda texts: cloud_labels(cloud, texts),
        "system": lambda texts: [d.label for d in router.route(texts)],
    }
    outcomes = run_suite(models, base, build_checks(base, edge.labels, cases, seed))
    checks = gate_checks(outcomes, config.max_failure_rate)
    return BehaviourReport(outcomes, checks, report(outcomes, checks))


def sample_texts(frame: pd.DataFrame, n: int, seed: int) -> list[str]:
    """Up to ``n`` texts of ``frame``, drawn reproducibly."""
    return frame["text"].sample(n=min(n, len(frame)), random_state=seed).tolist()


@task(name="behaviour", cache_policy=NO_CACHE)
def behaviour_checks(
    config: PipelineConfig,
    data: PreparedData,
    edge: OnnxClassifier,
    cloud: CloudBackend,
    settings: RouterSettings,
    cases: list[tuple[str, str]],
) -> BehaviourReport:
    """Prefect task: run the suite on the test split, log it, and fail the flow past its limits."""
    base = sample_texts(data.frame("test"), config.behaviour.samples, config.seed)
    with tracking.stage("behaviour", config.behaviour) as run_id:
        result = evaluate(edge, cloud, settings, base, cases, config.behaviour, config.seed)
        tracking.log_metrics(run_id, result.metrics)
        tracking.log_text(run_id, result.report, "behaviour_report.md")
        create_markdown_artifact(
            key="behaviour-report",
            markdown=result.report,
            description="Behavioural checks " + ("passed" if result.passed else "failed"),
        )
        if not result.passed:
            raise BehaviourFailed(result.report)
    return result
