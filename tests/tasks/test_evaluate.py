"""Quality figures of a model on a split: the lowest class recall counts only measurable classes."""

from __future__ import annotations

import pandas as pd
import pytest

from tasks.evaluate import MIN_CLASS_SUPPORT, quality


class Answers:
    """A classifier that answers from a table: ``quality`` needs only its labels and predict."""

    def __init__(self, answers: dict[str, str]) -> None:
        self.labels, self.answers = ["a", "b", "c"], answers

    def predict(self, texts):
        return [self.answers[t] for t in texts]


def test_the_lowest_class_recall_counts_the_classes_with_enough_test_messages():
    rows = [(f"a{i}", "a") for i in range(20)] + [(f"b{i}", "b") for i in range(MIN_CLASS_SUPPORT)]
    rows += [("c0", "c")]  # one message: too few to measure its class
    frame = pd.DataFrame(rows, columns=["text", "label"])
    answers = {t: "a" for t, _ in rows} | {f"b{i}": "b" for i in range(MIN_CLASS_SUPPORT // 2)}
    figures = quality(Answers(answers), frame)
    assert figures["min_class_recall"] == pytest.approx(0.5), "b: half of its messages; c is not counted"
    everything_right = quality(Answers({t: label for t, label in rows}), frame)
    assert everything_right["min_class_recall"] == 1.0 and everything_right["macro_f1"] == 1.0
