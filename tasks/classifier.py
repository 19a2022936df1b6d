"""Classifier fine-tuning from the DAPT checkpoint: head warm-up, then full fine-tuning."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
import pandas as pd
from prefect import task

from edgeroute.config import PipelineConfig
from tasks import trainer
from tasks.data import PreparedData

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


def warm_up_head(model, config: PipelineConfig, output: Path, run_id: str | None, **datasets) -> None:
    """Stage 1: train the new head with the backbone frozen, then unfreeze the backbone."""
    settings = config.classifier
    model.base_model.requires_grad_(False)
    trainer.build_trainer(
        model=model,
        args=trainer.training_arguments(
            output,
            epochs=settings.head_epochs,
            batch_size=settings.batch_size,
            learning_rate=settings.head_learning_rate,
            seed=config.seed,
            warmup_ratio=settings.warmup_ratio,
        ),
        callbacks=[trainer.metrics_callback(run_id, STAGE)],
        **datasets,
    ).train()
    model.base_model.requires_grad_(True)


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


def fine_tune(
    config: PipelineConfig, data: PreparedData, init: str, output: Path, run_id: str | None
) -> dict[str, float]:
    """Train a sequence classifier from ``init`` in two stages; save the best with its label names.

    With ``classifier.backend=tensorflow`` Keras trains it (`tasks.classifier_tf`); either way
    ``output`` receives the same PyTorch checkpoint.
    """
    if config.classifier.backend == "tensorflow":
        from tasks import classifier_tf  # imports TensorFlow: only when it is asked for

        return classifier_tf.fine_tune(config, data, init, output, run_id)

    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        EarlyStoppingCallback,
        set_seed,
    )

    settings = config.classifier
    set_seed(config.seed)  # the new head is initialised from the global generator
    tokenizer = AutoTokenizer.from_pretrained(init)
    model = AutoModelForSequenceClassification.from_pretrained(init, **label_mapping(data.labels))
    splits, encoded = encode_splits(tokenizer, data, config.model.max_length)
    common = {
        "train_dataset": encoded["train"],
        "eval_dataset": encoded["validation"],
        "data_collator": DataCollatorWithPadding(tokenizer),
        "compute_metrics": compute_metrics,
    }

    if settings.head_epochs:
        warm_up_head(model, config, output, run_id, **common)

    full = trainer.build_trainer(
        model=model,
        args=trainer.training_arguments(
            output,
            epochs=settings.epochs,
            batch_size=settings.batch_size,
            learning_rate=settings.learning_rate,
            seed=config.seed,
            lr_scheduler_type="reduce_lr_on_plateau",
            lr_scheduler_kwargs={"mode": "max", "factor": settings.plateau_factor, "patience": 0},
            **trainer.KEEP_BEST_EPOCH,
        ),
        callbacks=[
            EarlyStoppingCallback(early_stopping_patience=settings.patience),
            trainer.metrics_callback(run_id, STAGE, epoch_offset=settings.head_epochs),
        ],
        **common,
    )
    full.train()

    def predict(name: str) -> tuple[np.ndarray, np.ndarray]:
        # Evaluation batches are grouped by length too: take the labels in prediction order.
        prediction = full.predict(encoded[name])
        return prediction.label_ids, prediction.predictions.argmax(-1)

    results = {"epochs_trained": float(full.state.epoch or 0)}
    results |= final_metrics(data, splits, predict, output, full.is_world_process_zero())
    trainer.save_checkpoint(full, model, tokenizer, output)
    if full.is_world_process_zero():
        save_labels(data.labels, output)
    return results


def cache_key(config: PipelineConfig, data: PreparedData, init: trainer.Checkpoint) -> str:
    """The starting checkpoint's key + data digest + classifier config + seed + code."""
    return trainer.stage_key(
        STAGE,
        init.key,
        data.digest,
        config.model.max_length,
        config.classifier.model_dump(mode="json"),
        config.seed,
        str(config.work_dir.resolve()),
        trainer.code_digest(*code_modules(config)),
    )


def code_modules(config: PipelineConfig) -> list[ModuleType]:
    """The modules whose source decides the classifier this config trains."""
    modules = [sys.modules[__name__], trainer]
    if config.classifier.backend == "tensorflow":
        from tasks import classifier_tf  # its import does not load TensorFlow

        modules.append(classifier_tf)
    return modules


def _task_cache_key(context, parameters) -> str:
    return cache_key(parameters["config"], parameters["data"], parameters["init"])


@task(name="train-classifier", cache_key_fn=_task_cache_key, persist_result=True, log_prints=True)
def train_classifier(
    config: PipelineConfig, data: PreparedData, init: trainer.Checkpoint, parent_run_id: str
) -> trainer.Checkpoint:
    """Prefect task: fine-tune the classifier as a nested MLflow run with its confusion matrix."""
    params = {"init": str(init.path), "num_labels": len(data.labels), "max_length": config.model.max_length}
    return trainer.tracked_stage(
        sys.modules[__name__], fine_tune, config, data, str(init.path), cache_key(config, data, init),
        parent_run_id, params | config.classifier.model_dump(mode="json"),
        artifacts=("confusion_matrix.png", "labels.json"),
    )  # fmt: skip


if __name__ == "__main__":
    trainer.stage_main(fine_tune)
