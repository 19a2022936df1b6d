"""Classifier fine-tuning from the DAPT checkpoint (the teacher): head warm-up, then full fine-tuning.

The recipe both backends share is `common`; `torch_backend` trains with PyTorch's Trainer,
`keras_backend` with Keras (``classifier.backend=tensorflow``). Either way the stage saves the
same PyTorch checkpoint. ``python -m tasks.classifier`` is one process of it under torchrun.
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import ModuleType

from prefect import task

from tasks.classifier import common, keras_backend, torch_backend
from tasks.classifier.common import STAGE
from tasks.support import trainer
from tasks.support.config import PipelineConfig
from tasks.support.dataset import PreparedData


def backend(config: PipelineConfig) -> ModuleType:
    """The module that trains for ``classifier.backend`` (importing either loads no framework)."""
    return keras_backend if config.classifier.backend == "tensorflow" else torch_backend


def fine_tune(
    config: PipelineConfig, data: PreparedData, init: str, output: Path, run_id: str | None
) -> dict[str, float]:
    """Train a sequence classifier from ``init``; save the best with its label names."""
    return backend(config).fine_tune(config, data, init, output, run_id)


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
    return [sys.modules[__name__], common, backend(config), trainer]


def _task_cache_key(context, parameters) -> str:
    return cache_key(parameters["config"], parameters["data"], parameters["init"])


@task(name="train-classifier", cache_key_fn=_task_cache_key, persist_result=True, log_prints=True)
def train_classifier(
    config: PipelineConfig, data: PreparedData, init: trainer.Checkpoint
) -> trainer.Checkpoint:
    """Prefect task: fine-tune the classifier as a nested MLflow run with its confusion matrix."""
    params = {"init": str(init.path), "num_labels": len(data.labels), "max_length": config.model.max_length}
    return trainer.tracked_stage(
        sys.modules[__name__], fine_tune, config, data, str(init.path), cache_key(config, data, init),
        params | config.classifier.model_dump(mode="json"),
        artifacts=("confusion_matrix.png", "labels.json"),
    )  # fmt: skip
