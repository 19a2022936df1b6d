"""An LLM's confidence in its label, from the log-probabilities of an OpenAI-compatible answer.

Servers report the model's own log-probabilities, before constrained decoding: llama.cpp gives
the forced JSON around a label `{` −8.1, `"` −19.1 and `}` −13.7, so the product over the whole
answer is about 1e-25 whatever the model thinks. Only the tokens of the label value count here.
Where the server gives ``top_logprobs``, the label's probability is renormalised over the label
set: at each token of the label, every alternative token is credited to the one label it can
begin (walking along the tokens that labels share; a token that several labels could begin is
credited to none), and the answer gets the probability of its own tokens. A label's later
tokens are taken as certain once it has diverged, as they are under the constraint. A label
that no alternative shows is taken at the least probability shown where it parts from the
answer, the most its token there can have: the answer's confidence is then a lower bound.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Sequence
from typing import Any


def encoded(label: str, json_form: bool) -> str:
    """``label`` as it is written in the answer: inside a JSON string, or bare."""
    return json.dumps(label, ensure_ascii=False)[1:-1] if json_form else label


def _span(content: str, value: str, json_form: bool) -> int | None:
    """Where the label ``value`` starts in ``content``: the JSON string after the first colon,
    or the bare answer."""
    if not json_form:
        start = content.find(value)
        return start if start >= 0 and content.strip() == value else None
    colon = content.find(":")
    start = content.find(f'"{value}"', colon + 1) if colon >= 0 else -1
    return start + 1 if start >= 0 else None


def _logprob(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number <= 0 else None


def label_scores(
    logprobs: Any, content: str, answer: str, labels: Sequence[str], json_form: bool
) -> dict[str, float] | None:
    """The log-probability mass found for each label (the answer's always; the others' where
    ``top_logprobs`` show them), or None where the log-probabilities are absent, malformed or do
    not spell the answer."""
    try:
        answered = logprobs["content"]
        tokens = [(str(t["token"]), _logprob(t["logprob"]), t.get("top_logprobs")) for t in answered]
    except (KeyError, TypeError, AttributeError):
        return None
    if not tokens or "".join(text for text, _, _ in tokens) != content:
        return None
    value = encoded(answer, json_form)
    start = _span(content, value, json_form)
    if start is None:
        return None
    end = start + len(value)
    written = {label: content[:start] + encoded(label, json_form) + content[end:] for label in labels}
    masses: dict[str, list[float]] = defaultdict(list)
    bounds: dict[str, float] = {}  # each label at most, from where it parts from the answer
    path, offset = 0.0, 0
    for text, logprob, top in tokens:
        begin, offset = offset, offset + len(text)
        if offset <= start:
            continue  # the scaffolding before the label, forced
        if begin >= end:
            break
        if logprob is None:
            return None
        alive = [label for label, alternative in written.items() if alternative[:begin] == content[:begin]]
        shown = [
            (candidate.get("token"), _logprob(candidate.get("logprob")))
            for candidate in (top if isinstance(top, list) else [])
            if isinstance(candidate, dict)
        ]
        shown = [(other, weight) for other, weight in shown if isinstance(other, str) and weight is not None]
        parting = [label for label in alive if not written[label].startswith(text, begin)]
        for label in parting if shown else []:
            bounds.setdefault(label, path + min(weight for _, weight in shown))
        for other, weight in shown:
            if other and other != text:
                fits = [label for label in alive if written[label].startswith(other, begin)]
                if len(fits) == 1:
                    masses[fits[0]].append(path + weight)
        path += logprob
    masses[answer].append(path)
    for label, bound in bounds.items():
        masses.setdefault(label, [bound])
    return {label: _logsumexp(values) for label, values in masses.items()}


def _logsumexp(values: list[float]) -> float:
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))


def confidence(scores: dict[str, float] | None, answer: str, temperature: float = 1.0) -> float | None:
    """The answer's probability: renormalised over the labels at ``temperature``, where the
    server showed alternatives; the label's own probability where it did not."""
    if not scores or answer not in scores:
        return None
    if len(scores) == 1:
        return math.exp(scores[answer])
    top = max(scores.values())
    weights = {label: math.exp((score - top) / temperature) for label, score in scores.items()}
    return weights[answer] / sum(weights.values())
