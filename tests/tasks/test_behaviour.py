"""The behavioural suite: its cases, how each kind of check fails, the gate on it, the cases file."""

from __future__ import annotations

import re

import pytest

from edgeroute.tables import TableError
from tasks.behaviour import (
    BehaviourReport,
    build_checks,
    gate_checks,
    mft_cases,
    read_cases,
    report,
    run_suite,
)
from tasks.support.config import BehaviourConfig, BehaviourLimits

SENTIMENT = ["negative", "neutral", "positive"]
BASE = [
    "The parcel arrived broken and nobody replies.",
    "What are your opening hours?",
    "Great service, thank you so much!",
    "My order #123456 is late again.",
]


def keywords(text: str) -> str:
    """A sentiment model that reads the words that carry sentiment and nothing else."""
    lowered = text.lower()
    if re.search(r"broken|late|unacceptable|worst|manager|complaint|ridiculous|fed up|furious|disappointed"
                 r"|nobody|crashing|never arrived", lowered):  # fmt: skip
        return "negative"
    if re.search(r"great|thank|brilliant|happy|appreciate|perfectly|recommend", lowered):
        return "positive"
    return "neutral"


def predictor(label_of):
    return lambda texts: [label_of(t) for t in texts]


def outcomes_of(model, base=BASE, labels=SENTIMENT, cases=()):
    return run_suite(
        {"edge": predictor(model), "system": predictor(model)}, base, build_checks(base, labels, cases, 0)
    )


def test_a_model_that_reads_only_sentiment_passes_every_check():
    outcomes = outcomes_of(keywords)
    assert set(outcomes) >= {
        "invariance.name", "invariance.email", "invariance.account", "invariance.placeholder",
        "invariance.numbers", "invariance.masked", "invariance.typos", "invariance.lowercase",
        "invariance.punctuation", "direction.escalation", "direction.thanks",
        "mft.neutral", "mft.positive", "mft.negative",
    }  # fmt: skip
    failed = {key: o["edge"].failures for key, o in outcomes.items() if o["edge"].failures}
    # Typos may hide a sentiment word from a keyword model; nothing else may move it.
    assert set(failed) <= {"invariance.typos"}, failed
    assert outcomes["invariance.numbers"]["edge"].cases == 1, "only the message with digits"


def test_a_model_that_reads_digits_fails_the_personal_data_checks():
    def digits(text: str) -> str:
        return "negative" if re.search(r"\d", text) else keywords(text)

    outcomes = outcomes_of(digits)
    # An account number makes the two messages that are not negative already negative.
    assert outcomes["invariance.account"]["edge"].failures == 2
    assert outcomes["invariance.account"]["edge"].rate == pytest.approx(0.5)
    assert outcomes["invariance.name"]["edge"].failures == 0
    checks = gate_checks(outcomes, BehaviourLimits(invariance=0.4))
    failed = [str(c) for c in checks if not c.passed]
    assert failed == ["edge.invariance 0.5000 <= 0.4: FAIL", "system.invariance 0.5000 <= 0.4: FAIL"]


def test_direction_fails_a_model_made_more_positive_by_an_escalation():
    def angry_is_happy(text: str) -> str:
        return (
            "positive"
            if re.search(r"unacceptable|worst|manager|complaint|ridiculous|fed up", text.lower())
            else (keywords(text))
        )

    outcomes = outcomes_of(angry_is_happy)
    escalation = outcomes["direction.escalation"]["edge"]
    # Cases count where the label can move towards positive: the three messages not already positive.
    assert escalation.cases == 3 and escalation.failures == 3
    assert outcomes["direction.thanks"]["edge"].failures == 0


def test_mft_cases_follow_the_labels_and_add_the_users_own():
    sentiment = mft_cases(SENTIMENT, [("Hello.", "neutral")], 0)
    assert set(sentiment) == {"neutral", "positive", "negative"}
    assert "Hello, I have a quick question about my recent purchase." in {
        c.text for c in sentiment["neutral"]
    }
    assert all(c.expected == label for label, cases in sentiment.items() for c in cases)
    intents = mft_cases(["card_arrival", "lost_card"], [("Where is my new card?", "card_arrival")], 0)
    assert {k: [c.text for c in v] for k, v in intents.items()} == {"card_arrival": ["Where is my new card?"]}


def test_intent_labels_get_invariance_and_the_users_cases_but_no_direction():
    checks = build_checks(BASE, ["card_arrival", "lost_card"], [("Where is my card?", "card_arrival")], 0)
    kinds = {c.key.split(".")[0] for c in checks}
    assert kinds == {"invariance", "mft"} and "mft.card_arrival" in {c.key for c in checks}


def test_the_report_and_metrics_show_each_check_and_mask_failed_cases():
    def email_is_positive(text: str) -> str:
        return "positive" if "@" in text else keywords(text)

    models = {"edge": email_is_positive, "cloud": keywords, "system": email_is_positive}
    outcomes = run_suite(
        {name: predictor(model) for name, model in models.items()}, BASE, build_checks(BASE, SENTIMENT, [], 0)
    )
    limits = BehaviourLimits(invariance=0.05, direction=0.05, mft=0.1)
    checks = gate_checks(outcomes, limits)
    assert {c.name for c in checks} == {
        f"{m}.{k}" for m in ("edge", "system") for k in ("invariance", "direction", "mft")
    }
    result = BehaviourReport(outcomes, checks, report(outcomes, checks))
    assert not result.passed and result.metrics["passed"] == 0
    assert result.metrics["edge.invariance.email"] == pytest.approx(0.75)
    assert result.metrics["cloud.invariance.email"] == 0
    assert result.metrics["edge.invariance"] == max(
        v for k, v in result.metrics.items() if k.startswith("edge.invariance.")
    )
    assert "| `invariance.email` | 0.750 (3/4) | 0.000 (0/4) | 0.750 (3/4) |" in result.report
    assert "- system.invariance 0.7500 <= 0.05: FAIL" in result.report
    assert "<EMAIL_ADDRESS>" in result.report and "@" not in result.report
    assert "| invariance | 0.750 | 0.000 | 0.750 | 0.05 |" in result.summary(limits)


def test_the_cases_file_names_the_row_and_label_at_fault(tmp_path):
    good = tmp_path / "cases.csv"
    good.write_text("text,label\nWhere is my card?,card_arrival\nI lost it,lost_card\n", encoding="utf-8")
    assert read_cases(BehaviourConfig(cases_path=good), ["card_arrival", "lost_card"]) == [
        ("Where is my card?", "card_arrival"), ("I lost it", "lost_card"),
    ]  # fmt: skip
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        '{"text": "a", "label": "lost_card"}\n{"text": "b", "label": "stolen"}\n', encoding="utf-8"
    )
    with pytest.raises(TableError, match=r"bad.jsonl: row 2, column 'label': 'stolen' is not one of"):
        read_cases(BehaviourConfig(cases_path=bad), ["card_arrival", "lost_card"])
    no_label = tmp_path / "no_label.csv"
    no_label.write_text("text\nhello\n", encoding="utf-8")
    with pytest.raises(TableError, match="column 'label' not found"):
        read_cases(BehaviourConfig(cases_path=no_label), SENTIMENT)
    assert read_cases(BehaviourConfig(), SENTIMENT) == []
