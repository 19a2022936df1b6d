"""The same training code as two processes under torchrun (gloo on CPU)."""

from __future__ import annotations

import json

from transformers import AutoModelForSequenceClassification

import tasks.classifier
from tasks.data import prepare_dataset
from tasks.support import trainer
from tasks.support.config import load_config


def test_classifier_trains_as_two_processes(tmp_path, tiny_bert):
    config = load_config("tiny", [f"work_dir={tmp_path / 'work'}", "compute.nproc_per_node=2"])
    data = prepare_dataset(config)[0]
    checkpoint = trainer.run_stage(
        tasks.classifier, tasks.classifier.fine_tune, config, data, str(tiny_bert), "0" * 64, None
    )
    majority = max(data.class_counts.values()) / sum(data.class_counts.values())
    assert checkpoint.metrics["test_accuracy"] > majority
    model = AutoModelForSequenceClassification.from_pretrained(checkpoint.path)
    assert model.config.id2label[0] == "negative"
    record = json.loads((checkpoint.path / "checkpoint.json").read_text())
    assert record["metrics"] == checkpoint.metrics
    assert not (checkpoint.path / "trainer").exists()
    assert load_config(str(checkpoint.path / "pipeline.yaml")) == config
