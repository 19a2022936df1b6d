"""Distillation: which layers the student keeps, the loss, and the student the stage trains."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from torch.nn.functional import cross_entropy, kl_div, log_softmax
from transformers import AutoConfig, AutoModelForSequenceClassification

from edgeroute.model import OnnxClassifier, load_tokenizer
from tasks.compress import export_onnx, op_counts
from tasks.distill import (
    NO_LABEL,
    STUDENT,
    build_student,
    distill,
    distillation_loss,
    extra_texts,
    select_layers,
)


def test_the_student_keeps_the_bottom_or_spread_out_layers():
    assert select_layers(6, 3, "bottom") == [0, 1, 2]
    assert select_layers(6, 3, "spread") == [0, 2, 5]
    assert select_layers(6, 2, "spread") == [0, 5]
    assert select_layers(12, 4, "spread") == [0, 4, 7, 11]
    assert select_layers(2, 1, "spread") == [0]
    for layers in (0, 6, 7):
        with pytest.raises(
            ValueError, match=f"distill.layers={layers} must be .* fewer than the teacher's 6"
        ):
            select_layers(6, layers, "bottom")


def _logits(seed: int, rows: int = 8, classes: int = 3) -> torch.Tensor:
    return torch.randn(rows, classes, generator=torch.Generator().manual_seed(seed)) * 3


def test_the_loss_mixes_hard_labels_and_the_softened_teacher():
    student, teacher, labels = _logits(0), _logits(1), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    t = 2.0
    kl = kl_div(
        log_softmax(student / t, -1), log_softmax(teacher / t, -1), reduction="batchmean", log_target=True
    )
    torch.testing.assert_close(
        distillation_loss(student, teacher, labels, 1.0, t), cross_entropy(student, labels)
    )
    torch.testing.assert_close(distillation_loss(student, teacher, labels, 0.0, t), t * t * kl)
    mixed = 0.3 * cross_entropy(student, labels) + 0.7 * t * t * kl
    torch.testing.assert_close(distillation_loss(student, teacher, labels, 0.3, t), mixed)
    # A student that matches its teacher has nothing left to learn from it.
    assert distillation_loss(teacher, teacher, labels, 0.0, t).item() == pytest.approx(0, abs=1e-6)


def test_rows_without_a_label_learn_from_the_teacher_alone():
    student, teacher = _logits(2, rows=4), _logits(3, rows=4)
    unlabelled = torch.full((4,), NO_LABEL)
    t = 3.0
    kl = kl_div(
        log_softmax(student / t, -1), log_softmax(teacher / t, -1), reduction="batchmean", log_target=True
    )
    torch.testing.assert_close(distillation_loss(student, teacher, unlabelled, 0.9, t), t * t * kl)


def test_build_student_keeps_the_teachers_embeddings_and_chosen_layers(tiny_classifier):
    teacher = AutoModelForSequenceClassification.from_pretrained(tiny_classifier)
    student, kept = build_student(str(tiny_classifier), ["negative", "neutral", "positive"], 1, "spread")
    assert kept == [0] and student.config.num_hidden_layers == 1
    assert len(student.bert.encoder.layer) == 1
    pairs = [
        (student.bert.embeddings.word_embeddings.weight, teacher.bert.embeddings.word_embeddings.weight),
        (
            student.bert.encoder.layer[0].output.dense.weight,
            teacher.bert.encoder.layer[0].output.dense.weight,
        ),
        (student.classifier.weight, teacher.classifier.weight),
    ]
    for mine, theirs in pairs:
        torch.testing.assert_close(mine, theirs)


def test_the_distilled_student_is_a_smaller_working_classifier(
    tiny_student, tiny_classifier, tiny_prepared, tmp_path
):
    _, data = tiny_prepared
    record = json.loads((tiny_student / STUDENT).read_text())
    assert record["init"] == "teacher" and record["kept_layers"] == [0]
    assert AutoConfig.from_pretrained(tiny_student).num_hidden_layers == 1
    assert json.loads((tiny_student / "labels.json").read_text()) == data.labels
    student_onnx = export_onnx(tiny_student, tmp_path / "student")
    teacher_onnx = export_onnx(tiny_classifier, tmp_path / "teacher")
    # One Softmax per attention block: the student's graph has fewer of them than the teacher's.
    assert op_counts(student_onnx)["Softmax"] == 1 < op_counts(teacher_onnx)["Softmax"] == 2
    assert student_onnx.stat().st_size < teacher_onnx.stat().st_size
    test = data.frame("test")
    predicted = OnnxClassifier(
        student_onnx, load_tokenizer(student_onnx.parent / "tokenizer.json", 64), data.labels
    ).predict(test["text"].tolist())
    # Better than always answering the most common class of the test split.
    majority = test["label"].value_counts(normalize=True).iloc[0]
    assert np.mean(np.array(predicted) == test["label"].to_numpy()) > majority


def test_under_a_cloud_base_the_student_starts_from_the_edge_base(tiny_prepared, tiny_classifier, tmp_path):
    """A teacher trained from a different checkpoint: the student is ``model.base`` cut to size,
    with its own tokenizer, taught through the teacher's logits."""
    config, data = tiny_prepared
    config = config.model_copy(
        update={
            "work_dir": tmp_path / "work",
            "model": config.model.model_copy(update={"cloud_base": str(tiny_classifier)}),
            "distill": config.distill.model_copy(update={"epochs": 1}),
        }
    )
    metrics = distill(config, data, str(tiny_classifier), tmp_path / "student", None)
    record = json.loads((tmp_path / "student" / STUDENT).read_text())
    assert record["init"] == "base" and record["source"].endswith("tiny-bert")
    assert record["source"].startswith(str(tmp_path / "work"))
    assert metrics["student_layers"] == 1 and 0 <= metrics["test_accuracy"] <= 1


def test_unlabelled_texts_add_soft_labels_but_never_a_labelled_splits_text(
    tiny_prepared, tiny_classifier, tmp_path
):
    config, data = tiny_prepared
    test_text = data.frame("test")["text"].iloc[0]
    fresh = ["Where can I change the address on my account?", "The app logs me out every few minutes."]
    path = tmp_path / "unlabelled.csv"
    pd.DataFrame({"text": [*fresh, test_text, fresh[0], "  "]}).to_csv(path, index=False)
    config = config.model_copy(
        update={
            "dapt": config.dapt.model_copy(update={"unlabelled_path": path}),
            "distill": config.distill.model_copy(update={"epochs": 1}),
        }
    )
    assert extra_texts(config, data) == fresh
    metrics = distill(config, data, str(tiny_classifier), tmp_path / "student", None)
    assert metrics["soft_labelled_texts"] == 2
