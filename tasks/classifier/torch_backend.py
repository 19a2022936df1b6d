"""The classifier stage in PyTorch (``classifier.backend=torch``): head warm-up, then full fine-tuning."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tasks.classifier.common import (
    STAGE,
    compute_metrics,
    encode_splits,
    final_metrics,
    label_mapping,
    save_labels,
)
from tasks.support import trainer
from tasks.support.config import PipelineConfig
from tasks.support.dataset import PreparedData


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


def fine_tune(
    config: PipelineConfig, data: PreparedData, init: str, output: Path, run_id: str | None
) -> dict[str, float]:
    """Train a sequence classifier from ``init`` in two stages; save the best with its label names."""
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
