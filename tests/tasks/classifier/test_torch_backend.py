"""Classifier fine-tuning on the tiny BERT: two stages, label names, metrics, determinism."""

from __future__ import annotations

import json

import pytest
import torch
from mlflow import MlflowClient
from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding

from tasks.classifier import fine_tune
from tasks.classifier.torch_backend import warm_up_head
from tasks.data import prepare_dataset
from tasks.support import tracking, trainer
from tasks.support.config import load_config


@pytest.fixture
def tiny_setup(tmp_path):
    config = load_config("tiny", [f"work_dir={tmp_path / 'work'}"])
    return config, prepare_dataset(config)[0]


def test_head_warm_up_leaves_the_backbone_untouched(tiny_setup, tiny_bert, tmp_path):
    config, data = tiny_setup
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=3)
    ids = {label: i for i, label in enumerate(data.labels)}
    train, validation = data.frame("train"), data.frame("validation")
    backbone = {k: v.clone() for k, v in model.base_model.state_dict().items()}
    head = {k: v.clone() for k, v in model.classifier.state_dict().items()}
    warm_up_head(
        model, config, tmp_path / "out", None,
        train_dataset=trainer.tokenize(tokenizer, train["text"], 64, train["label"].map(ids)),
        eval_dataset=trainer.tokenize(tokenizer, validation["text"], 64, validation["label"].map(ids)),
        data_collator=DataCollatorWithPadding(tokenizer),
    )  # fmt: skip
    assert all(torch.equal(v, model.base_model.state_dict()[k]) for k, v in backbone.items())
    assert not all(torch.equal(v, model.classifier.state_dict()[k]) for k, v in head.items())
    assert all(p.requires_grad for p in model.parameters())


def test_fine_tune_beats_the_majority_class_and_saves_label_names(
    tiny_setup, tiny_bert, tmp_path, mlflow_uri
):
    config, data = tiny_setup
    with tracking.pipeline_run("exp", "parent") as parent, tracking.stage_run(parent, "classifier") as run_id:
        metrics = fine_tune(config, data, str(tiny_bert), tmp_path / "out", run_id)
    majority = max(data.class_counts.values()) / sum(data.class_counts.values())
    assert metrics["test_accuracy"] > majority + 0.1
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "out")
    assert model.config.id2label == {0: "negative", 1: "neutral", 2: "positive"}
    assert json.loads((tmp_path / "out" / "labels.json").read_text()) == data.labels
    assert (tmp_path / "out" / "confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"
    client = MlflowClient(mlflow_uri)
    steps = [m.step for m in client.get_metric_history(run_id, "val_macro_f1")]
    assert steps == list(range(1, len(steps) + 1)) and len(steps) >= 2  # head epoch, then full epochs
    assert len(steps) <= config.classifier.head_epochs + config.classifier.epochs


def test_same_config_and_seed_same_metrics(tiny_setup, tiny_bert, tmp_path):
    config, data = tiny_setup
    first = fine_tune(config, data, str(tiny_bert), tmp_path / "a", None)
    second = fine_tune(config, data, str(tiny_bert), tmp_path / "b", None)
    assert first == second
