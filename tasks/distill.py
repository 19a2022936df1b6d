"""Distillation: the classifier (the teacher, served as the cloud tier) taught to a smaller student.

The student keeps the embeddings and ``distill.layers`` transformer layers of its source (the
teacher itself, or ``model.base`` when the teacher was trained from a different
``model.cloud_base``) and learns from the labels and the teacher's softened logits (Hinton,
Vinyals and Dean, "Distilling the Knowledge in a Neural Network", 2015; initialising from a
subset of the teacher's layers as in DistilBERT, Sanh et al., 2019):
``alpha · CE(labels) + (1 − alpha) · T² · KL(teacher_T ‖ student_T)``. The texts of
``dapt.unlabelled_path`` add the teacher's soft labels alone. The teacher's logits are computed
once, before training, not at every step.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
from prefect import task

from tasks.classifier import common
from tasks.data import unlabelled_texts
from tasks.support import base_model, trainer
from tasks.support.config import PipelineConfig
from tasks.support.dataset import SPLITS, PreparedData

STAGE = "distill"
STUDENT = "student.json"
# A teacher logit column beside the token ids; no label where the text came without one.
TEACHER_LOGITS = "teacher_logits"
NO_LABEL = -100


def select_layers(total: int, layers: int, layer_map: str) -> list[int]:
    """The teacher layers a student of ``layers`` keeps: the bottom ones, or spread over the depth
    (first and last included)."""
    if not 0 < layers < total:
        raise ValueError(f"distill.layers={layers} must be at least 1 and fewer than the teacher's {total}")
    if layer_map == "bottom":
        return list(range(layers))
    return sorted({round(i * (total - 1) / max(layers - 1, 1)) for i in range(layers)})


def encoder_blocks(model):
    """The ``ModuleList`` of transformer layers of a BERT-style encoder (BERT, RoBERTa, MPNet…)."""
    encoder = getattr(model.base_model, "encoder", None)
    blocks = getattr(encoder, "layer", None)
    if blocks is None or not hasattr(model.config, "num_hidden_layers"):
        raise ValueError(
            f"distillation needs a BERT-style encoder (base_model.encoder.layer); "
            f"{type(model).__name__} has none: set distill.enabled=false"
        )
    return blocks


def build_student(source: str, labels: list[str], layers: int, layer_map: str):
    """A sequence classifier with ``layers`` of ``source``'s layers, and the layers it kept."""
    import torch
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(source, **common.label_mapping(labels))
    blocks = encoder_blocks(model)
    kept = select_layers(len(blocks), layers, layer_map)
    model.base_model.encoder.layer = torch.nn.ModuleList(blocks[i] for i in kept)
    model.config.num_hidden_layers = len(kept)
    return model, kept


def distillation_loss(student_logits, teacher_logits, labels, alpha: float, temperature: float):
    """Per batch: ``alpha · CE + (1 − alpha) · T² · KL(teacher_T ‖ student_T)``; the KL term alone
    for rows without a label (``labels == -100``)."""
    import torch
    from torch.nn.functional import cross_entropy, kl_div, log_softmax

    t = temperature
    kl = kl_div(
        log_softmax(student_logits / t, dim=-1), log_softmax(teacher_logits / t, dim=-1),
        reduction="none", log_target=True,
    ).sum(-1) * t * t  # fmt: skip
    labelled = labels != NO_LABEL
    ce = cross_entropy(student_logits, labels.clamp(min=0), reduction="none")
    per_row = torch.where(labelled, alpha * ce + (1 - alpha) * kl, kl)
    return per_row.mean()


def teacher_logits(teacher: str, texts: list[str], max_length: int, batch_size: int = 64) -> np.ndarray:
    """The teacher's raw scores for ``texts``, in batches of similar length, without gradients."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(teacher)
    model = AutoModelForSequenceClassification.from_pretrained(teacher).eval()
    order = np.argsort([len(t) for t in texts], kind="stable")
    out = np.empty((len(texts), model.config.num_labels), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            rows = order[start : start + batch_size]
            batch = tokenizer(
                [texts[i] for i in rows], padding=True, truncation=True, max_length=max_length,
                return_tensors="pt",
            )  # fmt: skip
            out[rows] = model(**batch).logits.float().numpy()
    return out


def extra_texts(config: PipelineConfig, data: PreparedData) -> list[str]:
    """The unlabelled texts for soft labels, less any text of the labelled splits (no test leakage)."""
    labelled = set().union(*(data.frame(split)["text"] for split in SPLITS))
    return list(dict.fromkeys(t for t in unlabelled_texts(config) if t not in labelled))


def student_source(config: PipelineConfig, data: PreparedData, teacher: str) -> tuple[str, str]:
    """Where the student starts, and which: the teacher, or ``model.base`` under a ``cloud_base``."""
    if config.model.cloud_base is None or config.model.cloud_base == config.model.base:
        return teacher, "teacher"
    train = data.frame("train")["text"]
    return base_model.base_for_run(config.model.base, config.work_dir, data.digest, train), "base"


class DistillationCollator:
    """Pads token ids like ``DataCollatorWithPadding`` and stacks the teacher's logits beside them."""

    def __init__(self, tokenizer) -> None:
        from transformers import DataCollatorWithPadding

        self.pad = DataCollatorWithPadding(tokenizer)

    def __call__(self, features: list[dict]) -> dict:
        import torch

        batch = self.pad([{k: v for k, v in f.items() if k != TEACHER_LOGITS} for f in features])
        batch[TEACHER_LOGITS] = torch.tensor([f[TEACHER_LOGITS] for f in features], dtype=torch.float32)
        return batch


def distillation_trainer(alpha: float, temperature: float, **kwargs):
    """A `trainer.build_trainer` Trainer whose loss is `distillation_loss`."""
    from transformers import Trainer

    class DistillationTrainer(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            inputs = dict(inputs)
            teacher, labels = inputs.pop(TEACHER_LOGITS), inputs.pop("labels")
            outputs = model(**inputs)
            loss = distillation_loss(outputs.logits, teacher, labels, alpha, temperature)
            return (loss, outputs) if return_outputs else loss

    return trainer.build_trainer(trainer_class=DistillationTrainer, **kwargs)


def distill(
    config: PipelineConfig, data: PreparedData, init: str, output: Path, run_id: str | None
) -> dict[str, float]:
    """Train the student from the teacher checkpoint ``init``; save the best epoch with its labels."""
    from datasets import concatenate_datasets
    from transformers import AutoTokenizer, EarlyStoppingCallback, set_seed

    settings, max_length = config.distill, config.model.max_length
    set_seed(config.seed)  # a head new to the student is initialised from the global generator
    source, source_kind = student_source(config, data, init)
    tokenizer = AutoTokenizer.from_pretrained(source)
    model, kept = build_student(source, data.labels, settings.layers, settings.layer_map)
    splits, encoded = common.encode_splits(tokenizer, data, max_length)
    for name in ("train", "validation", "test"):
        scores = teacher_logits(init, splits[name]["text"].tolist(), max_length)
        encoded[name] = encoded[name].add_column(TEACHER_LOGITS, scores.tolist())
    extra = extra_texts(config, data)
    if extra:
        soft = trainer.tokenize(tokenizer, extra, max_length, [NO_LABEL] * len(extra))
        soft = soft.add_column(TEACHER_LOGITS, teacher_logits(init, extra, max_length).tolist())
        encoded["train"] = concatenate_datasets([encoded["train"], soft.cast(encoded["train"].features)])
    student = distillation_trainer(
        settings.alpha,
        settings.temperature,
        model=model,
        args=trainer.training_arguments(
            output,
            epochs=settings.epochs,
            batch_size=settings.batch_size,
            learning_rate=settings.learning_rate,
            seed=config.seed,
            remove_unused_columns=False,  # the teacher's logits reach the loss
            **trainer.KEEP_BEST_EPOCH,
        ),
        train_dataset=encoded["train"],
        eval_dataset=encoded["validation"],
        data_collator=DistillationCollator(tokenizer),
        compute_metrics=common.compute_metrics,
        callbacks=[
            EarlyStoppingCallback(early_stopping_patience=settings.patience),
            trainer.metrics_callback(run_id, STAGE),
        ],
    )
    student.train()

    def predict(name: str) -> tuple[np.ndarray, np.ndarray]:
        prediction = student.predict(encoded[name])
        return prediction.label_ids, prediction.predictions.argmax(-1)

    results = {
        "epochs_trained": float(student.state.epoch or 0),
        "student_layers": float(len(kept)),
        "soft_labelled_texts": float(len(extra)),
    }
    results |= common.final_metrics(data, splits, predict, output, student.is_world_process_zero())
    trainer.save_checkpoint(student, model, tokenizer, output)
    if student.is_world_process_zero():
        common.save_labels(data.labels, output)
        record = {"teacher": init, "init": source_kind, "source": source, "kept_layers": kept}
        (output / STUDENT).write_text(json.dumps(record | settings.model_dump(mode="json"), indent=2))
    return results


def cache_key(config: PipelineConfig, data: PreparedData, teacher: trainer.Checkpoint) -> str:
    """The teacher's key + data digest + the unlabelled texts + model and distill config + seed + code."""
    unlabelled = config.dapt.unlabelled_path
    return trainer.stage_key(
        STAGE,
        teacher.key,
        data.digest,
        hashlib.sha256(unlabelled.read_bytes()).hexdigest() if unlabelled else None,
        config.model.model_dump(mode="json"),
        config.distill.model_dump(mode="json"),
        config.seed,
        str(config.work_dir.resolve()),
        trainer.code_digest(sys.modules[__name__], common, trainer, base_model),
    )


def _task_cache_key(context, parameters) -> str:
    return cache_key(parameters["config"], parameters["data"], parameters["teacher"])


def student_tags(checkpoint: trainer.Checkpoint) -> dict[str, str]:
    """Where the student started and which of the teacher's layers it kept, from ``student.json``."""
    student = json.loads((checkpoint.path / STUDENT).read_text(encoding="utf-8"))
    return {
        "student_init": student["init"],
        "student_kept_layers": ",".join(map(str, student["kept_layers"])),
    }


@task(name="distill-student", cache_key_fn=_task_cache_key, persist_result=True, log_prints=True)
def distill_student(
    config: PipelineConfig, data: PreparedData, teacher: trainer.Checkpoint
) -> trainer.Checkpoint:
    """Prefect task: distil the teacher into the edge student, a nested MLflow run with per-epoch metrics."""
    params = {"teacher": str(teacher.path), "max_length": config.model.max_length}
    return trainer.tracked_stage(
        sys.modules[__name__], distill, config, data, str(teacher.path), cache_key(config, data, teacher),
        params | config.distill.model_dump(mode="json"),
        artifacts=("confusion_matrix.png", STUDENT), tags=student_tags,
    )  # fmt: skip


if __name__ == "__main__":
    trainer.stage_main(distill)
