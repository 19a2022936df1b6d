"""The classifier stage in Keras (``classifier.backend=tensorflow``): the same two-stage recipe.

transformers' TF classes start from the PyTorch DAPT checkpoint. The trained weights are put
back into the PyTorch class of the same architecture and saved exactly as the PyTorch backend
saves its model, so compression, the gate and the bundle do not know which backend trained it.
Importing this module does not load TensorFlow; training does.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import numpy as np

from tasks.classifier.common import (
    STAGE,
    classification_metrics,
    encode_splits,
    final_metrics,
    label_mapping,
    save_labels,
)
from tasks.support import trainer
from tasks.support.config import PipelineConfig
from tasks.support.dataset import PreparedData

NEEDS_TENSORFLOW = (
    "classifier.backend=tensorflow needs TensorFlow and tf-keras: install the 'tensorflow' extra "
    "(pip install -e '.[train,tensorflow]'), and leave USE_TF unset"
)


def keras_module():
    """tf-keras (Keras 2), the Keras that transformers' TF classes are built on."""
    # TensorFlow reads these when it is first imported: tf.keras must stay Keras 2, and its
    # informational start-up lines stay out of the training log.
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from transformers.utils import is_tf_available

    try:
        import tf_keras
    except ModuleNotFoundError as missing:
        raise RuntimeError(NEEDS_TENSORFLOW) from missing
    if not is_tf_available():  # USE_TF=0 or USE_TORCH=1 hide TensorFlow from transformers
        raise RuntimeError(NEEDS_TENSORFLOW)
    return tf_keras


def logits(model, batches) -> np.ndarray:
    """The model's logits over a batched ``tf.data`` dataset, in its order, dropout off."""
    return model.predict(batches, verbose=0)["logits"]


def _learning_rate(keras, optimizer) -> float:
    rate = optimizer.learning_rate
    if isinstance(rate, keras.optimizers.schedules.LearningRateSchedule):
        rate = rate(optimizer.iterations)
    return float(keras.backend.get_value(rate))


def epoch_metrics(keras, validation, truth: np.ndarray, run_id: str | None, epoch_offset: int, show: bool):
    """A callback that scores the validation split after each epoch and reports the epoch.

    It adds ``val_loss``, ``val_accuracy`` and ``val_macro_f1`` to the epoch's logs, where the
    callbacks after it (early stopping, reduce-on-plateau) read them; the names and steps in
    MLflow are those of the PyTorch backend.
    """
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    class EpochMetrics(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            scores = logits(self.model, validation)
            logs = logs if logs is not None else {}
            logs["val_loss"] = float(loss(truth, scores))
            logs.update({f"val_{k}": v for k, v in classification_metrics(truth, scores.argmax(-1)).items()})
            metrics = {
                "train_loss": float(logs["loss"]),
                "learning_rate": _learning_rate(keras, self.model.optimizer),
            } | {name: logs[name] for name in ("val_loss", "val_accuracy", "val_macro_f1")}
            trainer.report_epoch(run_id, STAGE, epoch_offset + epoch + 1, metrics, show)

    return EpochMetrics()


def save_as_pytorch(model, tokenizer, output: Path) -> None:
    """The Keras model's weights in the PyTorch class of its architecture, saved with the tokenizer."""
    from transformers import AutoModelForSequenceClassification
    from transformers.modeling_tf_pytorch_utils import load_tf2_model_in_pytorch_model

    # Not ``from_pretrained(..., from_tf=True)``: in transformers 4.57 it builds the model on the
    # meta device and copying the TF weights into it is a no-op.
    pytorch = AutoModelForSequenceClassification.from_config(model.config)
    # Raises if a PyTorch weight has no TF counterpart; reports TF weights that were left over.
    _, info = load_tf2_model_in_pytorch_model(pytorch, model, output_loading_info=True)
    if info["missing_keys"] or info["unexpected_keys"]:
        raise RuntimeError(f"Keras to PyTorch conversion did not match every weight: {info}")
    output.mkdir(parents=True, exist_ok=True)
    pytorch.save_pretrained(output)
    tokenizer.save_pretrained(output)


def train(
    config: PipelineConfig, data: PreparedData, init: str, output: Path, run_id: str | None
) -> tuple[object, dict[str, float]]:
    """Fine-tune in Keras and save the PyTorch checkpoint; the trained Keras model and its metrics."""
    keras = keras_module()
    import tensorflow as tf
    from transformers import AutoTokenizer, TFAutoModelForSequenceClassification, create_optimizer

    settings = config.classifier
    keras.utils.set_random_seed(config.seed)  # Python, NumPy, TensorFlow: head, dropout, shuffling
    tf.config.experimental.enable_op_determinism()
    tokenizer = AutoTokenizer.from_pretrained(init)
    model = TFAutoModelForSequenceClassification.from_pretrained(
        init, from_pt=True, **label_mapping(data.labels)
    )
    splits, encoded = encode_splits(tokenizer, data, config.model.max_length)
    # Each batch padded to its longest text; evaluation batches twice as large, as in the Trainer.
    batches = {
        name: model.prepare_tf_dataset(
            dataset,
            batch_size=settings.batch_size if name == "train" else 2 * settings.batch_size,
            shuffle=name == "train",
            tokenizer=tokenizer,
            drop_remainder=False,
        )
        for name, dataset in encoded.items()
    }
    truth = {name: np.asarray(dataset["labels"]) for name, dataset in encoded.items()}
    show = not sys.stderr.isatty()  # plain lines where there is no progress bar
    verbose = 0 if show else 1

    def report(epoch_offset: int):
        return epoch_metrics(keras, batches["validation"], truth["validation"], run_id, epoch_offset, show)

    backbone = getattr(model, model.base_model_prefix)
    if settings.head_epochs:
        # Stage 1: the new head alone, linear warm-up then linear decay, as the Trainer's default.
        backbone.trainable = False
        steps = math.ceil(len(encoded["train"]) / settings.batch_size) * settings.head_epochs
        optimizer, _ = create_optimizer(
            settings.head_learning_rate, steps, math.ceil(steps * settings.warmup_ratio)
        )
        model.compile(optimizer=optimizer)  # no loss given: the model's own cross-entropy
        model.fit(batches["train"], epochs=settings.head_epochs, callbacks=[report(0)], verbose=verbose)
        backbone.trainable = True

    # Stage 2: everything, at the smaller rate; the callbacks select on validation macro-F1.
    model.compile(optimizer=keras.optimizers.Adam(settings.learning_rate, epsilon=1e-8))
    history = model.fit(
        batches["train"],
        epochs=settings.epochs,
        verbose=verbose,
        callbacks=[
            report(settings.head_epochs),
            keras.callbacks.EarlyStopping(
                monitor="val_macro_f1", mode="max", patience=settings.patience, restore_best_weights=True
            ),
            keras.callbacks.ReduceLROnPlateau(
                monitor="val_macro_f1", mode="max", factor=settings.plateau_factor, patience=0
            ),
        ],
    )

    def predict(name: str) -> tuple[np.ndarray, np.ndarray]:
        return truth[name], logits(model, batches[name]).argmax(-1)

    results = {"epochs_trained": float(len(history.epoch))} | final_metrics(data, splits, predict, output)
    save_as_pytorch(model, tokenizer, output)
    save_labels(data.labels, output)
    return model, results


def fine_tune(
    config: PipelineConfig, data: PreparedData, init: str, output: Path, run_id: str | None
) -> dict[str, float]:
    """`tasks.classifier.fine_tune` for ``classifier.backend=tensorflow``: same inputs, same files."""
    return train(config, data, init, output, run_id)[1]
