"""The Keras backend on the tiny BERT: it learns, its checkpoint compresses and passes the gate
exactly as the PyTorch one does, its ONNX export computes what Keras computed, and it is seeded."""

from __future__ import annotations

import json

import numpy as np
import pytest
from mlflow import MlflowClient
from prefect import flow
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from edgeroute.model import OnnxClassifier, load_tokenizer
from tasks.classifier import code_modules, fine_tune, keras_backend
from tasks.compress import compress, int8_products
from tasks.evaluate import benchmark_all
from tasks.gate import gate_model
from tasks.support import tracking
from tasks.support.config import load_config

TEXTS = [
    "My refund has not arrived after 12 days.",
    "thanks!",
    "Can you tell me when order #123456 ships? My email is anna.12@example.com",
    "The delivery was great, but the headphones stopped working within a week and nobody answers.",
]
# The tiny preset with fewer full epochs: the tiny BERT has learnt by then, and it keeps the test short.
KERAS = ["classifier.backend=tensorflow", "classifier.epochs=4"]


def _config(tmp_path, *overrides):
    return load_config("tiny", [f"work_dir={tmp_path / 'work'}", *KERAS, *overrides])


@pytest.fixture(scope="module")
def keras_run(tmp_path_factory, tiny_prepared, tiny_bert):
    """One Keras fine-tuning, tracked in its own MLflow store; the trained Keras model kept."""
    _, data = tiny_prepared
    tmp = tmp_path_factory.mktemp("keras")
    uri = f"sqlite:///{tmp / 'mlflow' / 'mlflow.db'}"
    config = _config(tmp)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        with (
            tracking.pipeline_run("exp", "parent") as parent,
            tracking.stage_run(parent, "classifier") as run,
        ):
            model, metrics = keras_backend.train(config, data, str(tiny_bert), tmp / "out", run)
    return {
        "model": model,
        "metrics": metrics,
        "output": tmp / "out",
        "uri": uri,
        "run_id": run,
        "config": config,
    }


@pytest.fixture(scope="module")
def keras_compressed(tmp_path_factory, tiny_prepared, keras_run):
    config, data = tiny_prepared
    corpus = data.frame("train")["text"].tolist()
    return compress(
        keras_run["output"],
        corpus,
        config.compress,
        tmp_path_factory.mktemp("keras-compress"),
        calibration_texts=data.frame("calibration")["text"].tolist(),
        max_length=config.model.max_length,
    )


def test_the_backend_setting_picks_the_keras_stage(tmp_path, tiny_prepared, monkeypatch):
    _, data = tiny_prepared
    calls = []
    monkeypatch.setattr(keras_backend, "fine_tune", lambda *args: calls.append(args) or {"from": 1.0})
    assert fine_tune(_config(tmp_path), data, "init", tmp_path / "out", None) == {"from": 1.0}
    assert len(calls) == 1
    # The Keras module's source is part of the cache key of a Keras-trained classifier only.
    assert keras_backend in code_modules(_config(tmp_path))
    assert keras_backend not in code_modules(_config(tmp_path, "classifier.backend=torch"))


def test_without_tensorflow_in_transformers_the_error_says_what_to_install(monkeypatch):
    monkeypatch.setattr("transformers.utils.import_utils._tf_available", False)
    with pytest.raises(RuntimeError, match=r"install the 'tensorflow' extra"):
        keras_backend.keras_module()


def test_keras_learns_and_reports_what_the_pytorch_backend_reports(keras_run, tiny_prepared, tiny_classifier):
    _, data = tiny_prepared
    metrics, output = keras_run["metrics"], keras_run["output"]
    majority = max(data.class_counts.values()) / sum(data.class_counts.values())
    assert metrics["test_accuracy"] > majority + 0.1
    assert set(metrics) == {
        "epochs_trained", "validation_accuracy", "validation_macro_f1", "test_accuracy", "test_macro_f1",
        "baseline_tfidf_test_accuracy", "baseline_tfidf_test_macro_f1",
    }  # fmt: skip
    # The checkpoint is the PyTorch backend's, file for file, with the label names.
    assert {p.name for p in output.iterdir()} == {p.name for p in tiny_classifier.iterdir()}
    model = AutoModelForSequenceClassification.from_pretrained(output)
    assert model.config.id2label == {0: "negative", 1: "neutral", 2: "positive"}
    assert json.loads((output / "labels.json").read_text()) == data.labels
    assert (output / "confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"

    client = MlflowClient(keras_run["uri"])
    history = {
        name: client.get_metric_history(keras_run["run_id"], name)
        for name in ("train_loss", "val_loss", "val_accuracy", "val_macro_f1", "learning_rate")
    }
    settings = keras_run["config"].classifier
    steps = [m.step for m in history["val_macro_f1"]]
    assert steps == list(range(1, settings.head_epochs + int(metrics["epochs_trained"]) + 1))
    assert all([m.step for m in values] == steps for values in history.values())
    losses = [m.value for m in history["train_loss"]]
    assert losses[-1] < losses[0] - 0.2
    # Early stopping kept the epoch with the best validation macro-F1.
    assert metrics["validation_macro_f1"] == pytest.approx(max(m.value for m in history["val_macro_f1"]))


@flow(validate_parameters=False)
def _gate_only(config, data, compressed, benchmarks):
    """The gate task as the training flow runs it, without the stages before it."""
    return gate_model(config, data, compressed, benchmarks)


@pytest.mark.usefixtures("prefect_harness")
def test_keras_checkpoint_compresses_and_passes_the_gate(keras_compressed, tiny_prepared, mlflow_uri):
    config, data = tiny_prepared
    assert int8_products(keras_compressed.variants["int8"].model)
    benchmarks = benchmark_all(
        keras_compressed, data.labels, config.model.max_length, data.frame("test"), config.evaluate
    )
    with tracking.pipeline_run("exp", "parent"):
        decision = _gate_only(config, data, keras_compressed, benchmarks)
    assert "| pass |" in decision.report
    assert decision.metrics["accuracy"] >= config.gate.min_accuracy_retention * benchmarks["fp32"]["accuracy"]


def test_onnx_logits_match_the_trained_keras_model(keras_run, keras_compressed, tiny_prepared):
    _, data = tiny_prepared
    tokenizer = AutoTokenizer.from_pretrained(keras_run["output"])
    expected = keras_run["model"](
        dict(tokenizer(TEXTS, padding=True, truncation=True, max_length=64, return_tensors="np")),
        training=False,
    ).logits.numpy()
    fp32 = keras_compressed.variants["fp32"]
    actual = OnnxClassifier(fp32.model, load_tokenizer(fp32.tokenizer, 64), data.labels).logits(TEXTS)
    np.testing.assert_allclose(actual, expected, atol=1e-4)
    assert np.ptp(expected, axis=0).max() > 0.1  # the texts get different scores: the match means something


def test_same_seed_same_metrics_and_weights(keras_run, tmp_path, tiny_prepared, tiny_bert):
    _, data = tiny_prepared
    model, metrics = keras_backend.train(keras_run["config"], data, str(tiny_bert), tmp_path / "again", None)
    assert metrics == keras_run["metrics"]
    weights = zip(model.get_weights(), keras_run["model"].get_weights(), strict=True)
    assert all(np.array_equal(a, b) for a, b in weights)
