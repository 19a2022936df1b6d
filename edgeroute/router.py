"""The edge-first router: the INT8 model answers; hard or uncertain queries go to the cloud.

Per batch: one edge call for every query; features (temperature-scaled confidence, the
reference complexity score, the share of unfamiliar word pieces); a decision with its reason;
one cloud call for the escalated subset, with personal data masked first. When the cloud
fails, the edge answer comes back with reason ``cloud_error``. Decisions are deterministic:
the optional shadow sample, sent to the cloud only to measure agreement, is chosen by a hash
of the text, not by chance.

Costs are counted honestly: every query pays for the edge model, which always runs; a query
that reached the cloud (escalated, shadowed, or attempted and failed) pays for the cloud too.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from edgeroute.cloud import CloudBackend, CloudRequestError, CloudUnavailable, LocalCloud, Prediction
from edgeroute.model import OnnxClassifier, softmax
from edgeroute.privacy import mask

logger = logging.getLogger(__name__)

KEYWORDS = (
    "frustrated", "angry", "unacceptable", "manager", "supervisor",
    "complaint", "terrible", "awful", "disgusted", "furious",
)  # fmt: skip

# Reasons, in the order they are checked.
OPTIMAL_EDGE = "optimal_edge"
LOW_CONFIDENCE = "low_confidence"
HIGH_COMPLEXITY = "high_complexity"
UNFAMILIAR_TEXT = "unfamiliar_text"
CLOUD_ERROR = "cloud_error"
SHADOW = "shadow"
ESCALATION_REASONS = (LOW_CONFIDENCE, HIGH_COMPLEXITY, UNFAMILIAR_TEXT)

_SENTENCE = re.compile(r"[.!?]+")
_WORD = re.compile(r"\w+(?:'\w+)?")

CHUNK = 512  # texts per router call when routing a stream: bounded memory, one cloud call a chunk


def chunks(texts: Iterable[str], size: int = CHUNK) -> Iterator[list[str]]:
    """``texts`` in lists of at most ``size``, in order."""
    chunk: list[str] = []
    for text in texts:
        chunk.append(text)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


@dataclass(frozen=True)
class Costs:
    """Price per query of each tier, in dollars."""

    edge: float = 0.001
    cloud: float = 0.0136


@dataclass(frozen=True)
class RouterSettings:
    """What ``router.json`` holds: temperature, thresholds, costs, keywords and provenance."""

    temperature: float = 1.0
    min_confidence: float = 0.90
    max_complexity: float = 0.75
    max_unfamiliar_share: float = 0.5
    shadow_rate: float = 0.0
    costs: Costs = Costs()
    keywords: tuple[str, ...] = KEYWORDS
    calibration: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        problems = []
        if not 0 < self.temperature < math.inf:  # NaN fails too
            problems.append(f"temperature must be > 0 and finite (got {self.temperature})")
        for name in ("min_confidence", "max_complexity", "max_unfamiliar_share", "shadow_rate"):
            if not 0 <= getattr(self, name) <= 1:
                problems.append(f"{name} must be within [0, 1] (got {getattr(self, name)})")
        if not all(0 <= cost < math.inf for cost in (self.costs.edge, self.costs.cloud)):
            problems.append(f"costs must be finite and not negative (got {self.costs})")
        if problems:
            raise ValueError("invalid router settings: " + "; ".join(problems))

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RouterSettings:
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"invalid router settings: unknown field(s) {', '.join(unknown)}")
        values = dict(values)
        if "costs" in values:
            values["costs"] = Costs(**values["costs"])
        if "keywords" in values:
            values["keywords"] = tuple(values["keywords"])
        return cls(**values)

    @classmethod
    def load(cls, path: Path) -> RouterSettings:
        return cls.parse(path.read_bytes(), path)

    @classmethod
    def parse(cls, content: bytes, source: Path) -> RouterSettings:
        """``router.json``'s ``content``; a ValueError naming ``source`` when it is not valid."""
        try:
            return cls.from_dict(json.loads(content))
        except (json.JSONDecodeError, UnicodeDecodeError, TypeError, ValueError) as exc:
            raise ValueError(f"{source}: {exc}") from None


@dataclass(frozen=True)
class Features:
    """Per-query inputs to the decision, one array entry per query."""

    label: np.ndarray  # edge label index
    confidence: np.ndarray
    complexity: np.ndarray
    unfamiliar_share: np.ndarray


def complexity_score(texts: Sequence[str], confidence: np.ndarray, keywords: Sequence[str]) -> np.ndarray:
    """The reference score: length, words per sentence, edge uncertainty, escalation keywords.

    ``0.3·min(chars/200, 1) + 0.3·min(words per sentence/15, 1) + 0.2·(1 − |2·confidence − 1|)
    + 0.2·min(keywords/3, 1)``, each factor in [0, 1].
    """
    wanted = frozenset(keywords)
    length, per_sentence, keyword = (np.empty(len(texts)) for _ in range(3))
    for i, text in enumerate(texts):
        words = _WORD.findall(text.lower())
        sentences = max(len([s for s in _SENTENCE.split(text) if s.strip()]), 1)
        length[i] = min(len(text) / 200, 1.0)
        per_sentence[i] = min(len(words) / sentences / 15, 1.0)
        keyword[i] = min(sum(w in wanted for w in words) / 3, 1.0)
    uncertainty = 1 - np.abs(2 * confidence - 1)
    return 0.3 * length + 0.3 * per_sentence + 0.2 * uncertainty + 0.2 * keyword


def unicode_problem(text: str) -> str | None:
    """Why ``text`` is not valid Unicode (a lone surrogate: no tokenizer or UTF-8 store takes it)."""
    # Lone surrogates come from JSON escapes such as "\\ud800" and from undecodable arguments.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"not valid Unicode: a lone surrogate at character {exc.start}"
    return None


def unfamiliar_share(tokens: Sequence[str], unknown: str = "[UNK]") -> float:
    """Share of word pieces the vocabulary could not hold: ``[UNK]`` or a spelled-out character.

    A trimmed edge vocabulary keeps the pieces of the training data plus single characters, so a
    word it never saw is spelled ``##x`` by ``##x``; a high share means text unlike the training data.
    """
    pieces = [t for t in tokens if not (t.startswith("[") and t.endswith("]")) or t == unknown]
    if not pieces:
        return 0.0
    odd = sum(t == unknown or (t.startswith("##") and len(t) == 3) for t in pieces)
    return odd / len(pieces)


def compute_features(
    texts: Sequence[str], logits: np.ndarray, tokens: Sequence[Sequence[str]], settings: RouterSettings
) -> Features:
    """Features from the edge model's logits and word pieces for ``texts``."""
    probabilities = softmax(logits, settings.temperature)
    confidence = probabilities.max(axis=-1)
    return Features(
        label=probabilities.argmax(axis=-1),
        confidence=confidence,
        complexity=complexity_score(texts, confidence, settings.keywords),
        unfamiliar_share=np.array([unfamiliar_share(t) for t in tokens], dtype=np.float64),
    )


def escalation_reasons(features: Features, settings: RouterSettings) -> np.ndarray:
    """The reason for each query: an escalation reason, or ``optimal_edge``. Vectorised for sweeps."""
    reasons = np.full(len(features.confidence), OPTIMAL_EDGE, dtype=object)
    # Checked in reverse priority so that the first reason that applies is the one kept.
    reasons[features.unfamiliar_share > settings.max_unfamiliar_share] = UNFAMILIAR_TEXT
    reasons[features.complexity > settings.max_complexity] = HIGH_COMPLEXITY
    reasons[features.confidence < settings.min_confidence] = LOW_CONFIDENCE
    return reasons


def shadow_sample(texts: Sequence[str], rate: float) -> np.ndarray:
    """A deterministic ``rate`` share of texts, chosen by a hash of each text."""
    if rate <= 0:
        return np.zeros(len(texts), dtype=bool)
    hashes = [int.from_bytes(hashlib.blake2b(t.encode(), digest_size=8).digest()) for t in texts]
    return np.array(hashes, dtype=np.float64) / 2**64 < rate


@dataclass(frozen=True)
class Decision:
    """What the router answered for one query, why, and what it cost."""

    label: str
    confidence: float | None  # None: the cloud's answer, from a backend that gives no confidence
    route: str  # "edge" or "cloud"
    reason: str
    cost: float
    complexity: float
    unfamiliar_share: float
    edge_label: str
    edge_confidence: float
    cloud_label: str | None = None
    shadow: bool = False
    masked_text: str | None = None  # the text as the cloud was sent it, None where it was not

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Router:
    """Edge-first routing over a batch of texts."""

    def __init__(self, edge: OnnxClassifier, cloud: CloudBackend | None, settings: RouterSettings) -> None:
        self.edge = edge
        self.cloud = cloud
        self.settings = settings

    @property
    def labels(self) -> list[str]:
        return self.edge.labels

    def features(self, texts: Sequence[str]) -> Features:
        """One edge call for the whole batch, and the features each decision needs."""
        return compute_features(texts, *self.edge.logits_and_tokens(texts), self.settings)

    def route(self, texts: Sequence[str]) -> list[Decision]:
        """Decide every text; one cloud call for the escalated and shadowed subset."""
        decisions = self.decide_on_edge(texts)
        if not self.to_cloud(decisions):
            return decisions
        return self.settle(decisions, *self.ask_cloud(self.sent_texts(decisions)))

    def decide_on_edge(self, texts: Sequence[str]) -> list[Decision]:
        """The edge's decision of every text, in one edge call: final, or (`to_cloud`) waiting for
        the cloud's answer, with the masked text it is to be sent."""
        texts = list(texts)
        if not texts:
            return []
        settings, costs = self.settings, self.settings.costs
        features = self.features(texts)
        reasons = escalation_reasons(features, settings)
        shadow = (reasons == OPTIMAL_EDGE) & shadow_sample(texts, settings.shadow_rate)
        sent = (reasons != OPTIMAL_EDGE) | shadow
        return [
            Decision(
                label=self.labels[int(features.label[i])],
                confidence=float(features.confidence[i]),
                route="edge",
                reason=str(reasons[i]),
                cost=costs.edge,
                complexity=float(features.complexity[i]),
                unfamiliar_share=float(features.unfamiliar_share[i]),
                edge_label=self.labels[int(features.label[i])],
                edge_confidence=float(features.confidence[i]),
                shadow=bool(shadow[i]),
                masked_text=mask(texts[i]) if sent[i] and self.cloud is not None else None,
            )
            for i in range(len(texts))
        ]

    @staticmethod
    def to_cloud(decisions: Sequence[Decision]) -> list[int]:
        """Which of the edge's ``decisions`` wait for the cloud: the escalated and the shadowed."""
        return [i for i, d in enumerate(decisions) if d.reason != OPTIMAL_EDGE or d.shadow]

    def sent_texts(self, decisions: Sequence[Decision]) -> list[str] | None:
        """The masked texts the cloud is to answer, in `to_cloud` order (None without a cloud)."""
        if self.cloud is None:
            return None
        return [decisions[i].masked_text or "" for i in self.to_cloud(decisions)]

    def settle(
        self, decisions: Sequence[Decision], answers: Sequence[Prediction | None] | None, attempted: bool
    ) -> list[Decision]:
        """The edge's ``decisions`` with the cloud's ``answers`` (None: none came) to the texts
        that waited for it: escalated ones answered by the cloud, or by the edge with the reason
        `CLOUD_ERROR`; shadowed ones keep the edge's answer and note the cloud's. A text costs
        the cloud's price when the cloud was asked (``attempted``)."""
        costs = self.settings.costs
        settled = list(decisions)
        for position, i in enumerate(self.to_cloud(decisions)):
            answer = answers[position] if answers is not None else None
            escalated = decisions[i].reason != OPTIMAL_EDGE
            # What the backend says the call cost (its tokens), else the router's cloud cost.
            cloud_cost = answer.cost if answer is not None and answer.cost is not None else costs.cloud
            decision = replace(
                decisions[i], cost=costs.edge + (cloud_cost if attempted else 0.0),
                masked_text=decisions[i].masked_text if attempted else None,
            )  # fmt: skip
            if answer is None:
                settled[i] = replace(decision, reason=CLOUD_ERROR if escalated else decision.reason)
            elif escalated:
                settled[i] = replace(
                    decision, label=answer.label, confidence=answer.confidence, route="cloud",
                    cloud_label=answer.label,
                )  # fmt: skip
            else:
                settled[i] = replace(decision, cloud_label=answer.label)
        return settled

    @property
    def cloud_is_remote(self) -> bool:
        """Whether escalations wait on another service (not the bundle's model in this process)."""
        return self.cloud is not None and self.cloud.name != LocalCloud.name

    def ask_cloud(self, masked: list[str] | None) -> tuple[Sequence[Prediction | None] | None, bool]:
        """The cloud's answers for the ``masked`` texts (None on failure; None for each text the
        cloud refused), and whether it was called."""
        if self.cloud is None:
            return None, False
        try:
            answers = self.cloud.classify(masked)
        except CloudRequestError as exc:
            if len(masked) == 1:
                logger.warning("cloud backend %s refused a query: %s", self.cloud.name, exc)
                return None, True
            # One text must not fail the others of its batch: each is asked alone.
            return [self._ask_alone(text) for text in masked], True
        except CloudUnavailable as exc:
            logger.warning("cloud backend %s unavailable: %s", self.cloud.name, exc)
            return None, False
        except Exception as exc:  # any backend failure falls back to the edge answer
            logger.warning("cloud backend %s failed for %d queries: %s", self.cloud.name, len(masked), exc)
            return None, True
        return self._checked(answers, len(masked)), True

    def _ask_alone(self, masked: str) -> Prediction | None:
        try:
            answers = self._checked(self.cloud.classify([masked]), 1)
        except Exception as exc:
            logger.warning("cloud backend %s failed for a query: %s", self.cloud.name, exc)
            return None
        return answers[0] if answers else None

    def _checked(self, answers: list[Prediction | None], expected: int) -> list[Prediction | None] | None:
        """``answers``, None for each that is not a label of the bundle; None when they are not
        one per query."""
        if len(answers) != expected:
            logger.warning(
                "cloud backend %s answered %d of %d queries", self.cloud.name, len(answers), expected
            )
            return None
        unknown = sum(answer is not None and answer.label not in self.labels for answer in answers)
        if unknown:
            logger.warning(
                "cloud backend %s answered %d labels outside the bundle's", self.cloud.name, unknown
            )
        return [answer if answer is not None and answer.label in self.labels else None for answer in answers]


def cloud_only_cost(decisions: Sequence[Decision], costs: Costs) -> float:
    """What a query costs sent to the cloud alone: the mean cloud cost of the queries the cloud
    answered here (their tokens, for an LLM priced by them), else the router's cloud cost."""
    answered = [d.cost - costs.edge for d in decisions if d.route == "cloud" or d.cloud_label is not None]
    return sum(answered) / len(answered) if answered else costs.cloud


def summarize(
    decisions: Sequence[Decision], costs: Costs, truth: Sequence[str] | None = None
) -> dict[str, Any]:
    """Edge share, reasons, cost per query and savings against sending everything to the cloud.

    With ``truth``, also the system's accuracy and the accuracy of the edge-answered queries.
    """
    n = len(decisions)
    if not n:
        raise ValueError("no decisions to summarize")
    on_edge = [d.route == "edge" for d in decisions]
    cost, cloud_only = sum(d.cost for d in decisions) / n, cloud_only_cost(decisions, costs)
    summary: dict[str, Any] = {
        "queries": n,
        "edge_share": sum(on_edge) / n,
        "cost_per_query": cost,
        "cloud_only_cost_per_query": cloud_only,
        "savings_vs_cloud_only": 1 - cost / cloud_only if cloud_only else 0.0,
        "shadowed": sum(d.shadow for d in decisions),
        "reasons": dict(Counter(d.reason for d in decisions).most_common()),
    }
    if truth is not None:
        right = [d.label == y for d, y in zip(decisions, truth, strict=True)]
        edge_right = [r for r, e in zip(right, on_edge, strict=True) if e]
        summary["accuracy"] = sum(right) / n
        summary["edge_answered_accuracy"] = sum(edge_right) / len(edge_right) if edge_right else float("nan")
    shadowed = [d for d in decisions if d.shadow and d.cloud_label is not None]
    if shadowed:
        summary["shadow_agreement"] = sum(d.cloud_label == d.edge_label for d in shadowed) / len(shadowed)
    return summary


def project(decisions: Sequence[Decision], costs: Costs, per_month: int) -> dict[str, float]:
    """Monthly cost of ``per_month`` messages routed like ``decisions``, and against cloud only."""
    monthly = sum(d.cost for d in decisions) / len(decisions) * per_month
    cloud_only = cloud_only_cost(decisions, costs) * per_month
    return {
        "per_month": per_month,
        "monthly_cost": monthly,
        "monthly_cloud_only_cost": cloud_only,
        "monthly_savings": cloud_only - monthly,
    }
