"""The classifier recipe both backends share: label mapping, encoding, metrics, the TF-IDF bar,
the confusion matrix and the label file."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from tasks.support import trainer
from tasks.support.dataset import PreparedData

STAGE = "classifier"


def classification_metrics(labels: np.ndarray, predictions: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score

    return {
        "accuracy": float(accuracy_score(labels, predictions)),
        "macro_f1": float(f1_score(labels, predictions, average="macro", zero_division=0)),
    }


def tfidf_baseline(train: pd.DataFrame, test: pd.DataFrame) -> dict[str, float]:
    """TF-IDF (words and bigrams) + logistic regression: the bar a transformer must clear."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
    model = LogisticRegression(max_iter=2000, C=10.0)
    model.fit(vectorizer.fit_transform(train["text"]), train["label"])
    return classification_metrics(test["label"].to_numpy(), model.predict(vectorizer.transform(test["text"])))


def compute_metrics(prediction) -> dict[str, float]:
    return classification_metrics(prediction.label_ids, prediction.predictions.argmax(-1))


def save_confusion_matrix(labels: list[str], truth: np.ndarray, predicted: np.ndarray, path: Path) -> None:
    """A confusion-matrix PNG; cell counts are written only when there are few classes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay

    size = min(4 + 0.25 * len(labels), 30)
    fig, ax = plt.subplots(figsize=(size, size))
    ConfusionMatrixDisplay.from_predictions(
        truth, predicted, labels=range(len(labels)), display_labels=labels, ax=ax,
        include_values=len(labels) <= 20, xticks_rotation="vertical", colorbar=False,
    )  # fmt: skip
    ax.set_title("Test split")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def label_mapping(labels: list[str]) -> dict:
    """``from_pretrained`` arguments that give a new classification head these label names."""
    return {
        "num_labels": len(labels),
        "id2label": dict(enumerate(labels)),
        "label2id": {label: i for i, label in enumerate(labels)},
    }


def encode_splits(tokenizer, data: PreparedData, max_length: int) -> tuple[dict[str, pd.DataFrame], dict]:
    """The train, validation and test frames, and each as unpadded token ids with label ids."""
    label_ids = {label: i for i, label in enumerate(data.labels)}
    splits = {name: data.frame(name) for name in ("train", "validation", "test")}
    encoded = {
        name: trainer.tokenize(tokenizer, frame["text"], max_length, frame["label"].map(label_ids))
        for name, frame in splits.items()
    }
    return splits, encoded


def final_metrics(
    data: PreparedData,
    splits: dict[str, pd.DataFrame],
    predict: Callable[[str], tuple[np.ndarray, np.ndarray]],
    output: Path,
    main_process: bool = True,
) -> dict[str, float]:
    """Validation and test scores of the kept model, the test confusion matrix, the TF-IDF bar.

    ``predict(split)`` gives the true and the predicted label ids of that split.
    """
    results: dict[str, float] = {}
    for name in ("validation", "test"):
        truth, predicted = predict(name)
        results |= {f"{name}_{k}": v for k, v in classification_metrics(truth, predicted).items()}
        if name == "test" and main_process:
            output.mkdir(parents=True, exist_ok=True)
            save_confusion_matrix(data.labels, truth, predicted, output / "confusion_matrix.png")
    return results | {
        f"baseline_tfidf_test_{k}": v for k, v in tfidf_baseline(splits["train"], splits["test"]).items()
    }


def save_labels(labels: list[str], output: Path) -> None:
    (output / "labels.json").write_text(json.dumps(labels, indent=2), encoding="utf-8")
