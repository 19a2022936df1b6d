"""Hugging Face Trainer plumbing shared by the DAPT and classifier stages.

A stage is a plain function ``run(config, data, init, output, run_id)`` that trains and saves
a checkpoint into ``output``. `run_stage` runs it in this process or, with
``compute.nproc_per_node > 1``, as that many processes under torchrun (gloo on CPU, NCCL on
GPUs): the same function, launched through the stage module's ``python -m`` entry point.
The checkpoint directory is written whole or not at all.
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import logging
import math
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType

from edgeroute.config import to_yaml
from edgeroute.files import atomic_directory, exclusive, staging_of
from tasks.support import tracking
from tasks.support.config import PipelineConfig, build_config
from tasks.support.dataset import PreparedData

logger = logging.getLogger(__name__)

StageFn = Callable[[PipelineConfig, PreparedData, str, Path, "str | None"], dict[str, float]]
COMPLETE = "checkpoint.json"
# Training arguments that save each epoch's model and end on the best one by validation macro-F1.
KEEP_BEST_EPOCH = {
    "save_strategy": "epoch",
    "save_only_model": True,
    "save_total_limit": 1,
    "load_best_model_at_end": True,
    "metric_for_best_model": "macro_f1",
    "greater_is_better": True,
}
CONFIG = "pipeline.yaml"


@dataclass(frozen=True)
class Checkpoint:
    """A finished stage: where its model is, what produced it, and its headline metrics."""

    path: Path
    key: str
    stage: str
    metrics: dict[str, float]
    mlflow_run_id: str | None = None

    def to_json(self) -> dict:
        return asdict(self) | {"path": str(self.path)}


def code_digest(*modules: ModuleType) -> str:
    """A hash of the stage's source, so that a code change invalidates its cache."""
    sha = hashlib.sha256()
    for module in modules:
        sha.update(inspect.getsource(module).encode())
    return sha.hexdigest()


def stage_key(stage: str, *parts: object) -> str:
    """A content key for a stage: its name, inputs, config section and code."""
    payload = json.dumps([stage, *parts], sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


def checkpoint_dir(config: PipelineConfig, stage: str, key: str) -> Path:
    return (config.work_dir / "checkpoints" / f"{stage}-{key[:16]}").resolve()


def load_checkpoint(path: Path) -> Checkpoint | None:
    """The checkpoint recorded in ``path``, if a run finished writing it."""
    marker = path / COMPLETE
    if not marker.is_file():
        return None
    record = json.loads(marker.read_text(encoding="utf-8"))
    return Checkpoint(**record | {"path": Path(record["path"])})


def run_stage(
    module: ModuleType,
    fn: StageFn,
    config: PipelineConfig,
    data: PreparedData,
    init: str,
    key: str,
    run_id: str | None,
) -> Checkpoint:
    """Train a stage into its keyed checkpoint directory, or reuse the one already there."""
    stage = module.STAGE
    destination = checkpoint_dir(config, stage, key)
    # A second run on the same key (another `edgeroute train` on this work directory) waits
    # for the first and reuses its checkpoint.
    with exclusive(config.work_dir.resolve() / "locks" / f"{destination.name}.lock"):
        for stale in staging_of(destination):  # a killed run's: no live writer holds the lock
            shutil.rmtree(stale, ignore_errors=True)
        existing = load_checkpoint(destination)
        if existing is not None:
            logger.info("%s: reusing checkpoint %s", stage, destination)
            return existing
        with atomic_directory(destination) as staging:
            # The config that produced the checkpoint is saved beside it (and read by torchrun workers).
            (staging / CONFIG).write_text(to_yaml(config), encoding="utf-8")
            if config.compute.nproc_per_node > 1:
                metrics = _torchrun(module, config, data, init, staging, run_id)
            else:
                metrics = fn(config, data, init, staging, run_id)
            checkpoint = Checkpoint(destination, key, stage, metrics, run_id)
            (staging / COMPLETE).write_text(json.dumps(checkpoint.to_json(), indent=2), encoding="utf-8")
    return checkpoint


def tracked_stage(
    module: ModuleType,
    fn: StageFn,
    config: PipelineConfig,
    data: PreparedData,
    init: str,
    key: str,
    params: dict,
    artifacts: Iterable[str] = (),
    tags: Callable[[Checkpoint], dict] | None = None,
) -> Checkpoint:
    """`run_stage` as a nested MLflow run: its params, then the checkpoint's metrics, the named
    files of the checkpoint as artifacts, and tags (the checkpoint, the cache key, ``tags``)."""
    with tracking.stage(module.STAGE, params) as run_id:
        checkpoint = run_stage(module, fn, config, data, init, key, run_id)
        tracking.log_metrics(run_id, checkpoint.metrics)
        for name in artifacts:
            tracking.log_artifact(run_id, checkpoint.path / name)
        extra = tags(checkpoint) if tags else {}
        tracking.set_tags(run_id, {"checkpoint": str(checkpoint.path), "cache_key": key} | extra)
    return checkpoint


def _torchrun(
    module: ModuleType,
    config: PipelineConfig,
    data: PreparedData,
    init: str,
    output: Path,
    run_id: str | None,
) -> dict[str, float]:
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        f"--nproc_per_node={config.compute.nproc_per_node}",
        "-m", module.__name__,
        "--config", str(output / CONFIG), "--data", str(data.directory), "--init", init,
        "--output", str(output),
    ]  # fmt: skip
    if run_id:
        command += ["--mlflow-run-id", run_id]
    logger.info("launching: %s", " ".join(command))
    # Workers train with PyTorch only (the Keras backend runs in one process): keep transformers
    # from loading TensorFlow, when it is installed, in each of them (seconds and ~0.8 GB apiece).
    subprocess.run(command, check=True, env=os.environ | {"USE_TF": "0"})
    return json.loads((output / "metrics.json").read_text(encoding="utf-8"))


def stage_main(fn: StageFn, argv: list[str] | None = None) -> None:
    """``python -m tasks.<stage>``: one process of a stage, as torchrun or accelerate launch it."""
    import yaml

    parser = argparse.ArgumentParser(description=fn.__doc__)
    parser.add_argument("--config", type=Path, required=True, help="pipeline config YAML")
    parser.add_argument("--data", type=Path, required=True, help="prepared data directory")
    parser.add_argument("--init", required=True, help="checkpoint to start from")
    parser.add_argument("--output", type=Path, required=True, help="where to save the model")
    parser.add_argument("--mlflow-run-id", default=None)
    args = parser.parse_args(argv)
    config = build_config(yaml.safe_load(args.config.read_text(encoding="utf-8")), str(args.config))
    metrics = fn(config, PreparedData.load(args.data), args.init, args.output, args.mlflow_run_id)
    if int(os.environ.get("RANK", "0")) == 0:
        (args.output / "metrics.json").write_text(json.dumps(metrics), encoding="utf-8")


def training_arguments(
    output: Path, *, epochs: float, batch_size: int, learning_rate: float, seed: int, **extra
):
    """TrainingArguments for CPU or GPU, single process or DDP, batches grouped by length.

    Every stage evaluates once per epoch and saves nothing unless ``extra`` says otherwise.
    """
    import torch
    from transformers import TrainingArguments

    cuda = torch.cuda.is_available()
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    return TrainingArguments(
        output_dir=str(output / "trainer"),
        num_train_epochs=epochs,
        per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=batch_size * 2,
        learning_rate=learning_rate,
        seed=seed,
        data_seed=seed,
        group_by_length=True,
        logging_strategy="epoch",
        report_to="none",
        disable_tqdm=not sys.stderr.isatty(),
        use_cpu=not cuda,
        ddp_backend="gloo" if distributed and not cuda else None,
        dataloader_num_workers=0,
        **{"eval_strategy": "epoch", "save_strategy": "no"} | extra,
    )


def save_checkpoint(hf_trainer, model, tokenizer, output: Path) -> None:
    """The model and tokenizer as a Hugging Face checkpoint, from the main process only."""
    if hf_trainer.is_world_process_zero():
        model.save_pretrained(output)
        tokenizer.save_pretrained(output)
        shutil.rmtree(output / "trainer", ignore_errors=True)


def build_trainer(trainer_class=None, **kwargs):
    """A `transformers.Trainer` (or ``trainer_class``) whose per-epoch lines come from
    `metrics_callback` alone."""
    from transformers import PrinterCallback, Trainer

    hf_trainer = (trainer_class or Trainer)(**kwargs)
    hf_trainer.remove_callback(PrinterCallback)
    return hf_trainer


def tokenize(tokenizer, texts: Iterable[str], max_length: int, labels: Iterable[int] | None = None):
    """A `datasets.Dataset` of token ids, unpadded: the collator pads each batch to its longest."""
    from datasets import Dataset

    encoded = tokenizer(list(texts), truncation=True, max_length=max_length)
    columns = {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}
    if labels is not None:
        columns["labels"] = list(labels)
    return Dataset.from_dict(columns)


def _metric_name(key: str) -> str:
    if key == "loss":
        return "train_loss"
    return "val_" + key.removeprefix("eval_") if key.startswith("eval_") else key


def metrics_callback(run_id: str | None, stage: str, epoch_offset: int = 0, perplexity: bool = False):
    """Per-epoch metrics to the stage's MLflow run and, without a TTY, as plain lines on stdout."""
    from transformers import TrainerCallback

    class MetricsCallback(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            # The end-of-training summary repeats the epochs' figures as averages: skip it.
            if not state.is_world_process_zero or not logs or "train_runtime" in logs:
                return
            epoch = epoch_offset + math.ceil(state.epoch or 0)
            metrics = {
                _metric_name(key): float(value)
                for key, value in logs.items()
                if key != "epoch"
                and isinstance(value, int | float)
                and "_per_second" not in key
                and not key.endswith(("_runtime", "_time"))
            }
            if perplexity and "val_loss" in metrics:
                metrics["val_perplexity"] = math.exp(metrics["val_loss"])
            report_epoch(run_id, stage, epoch, metrics, show=args.disable_tqdm)

    return MetricsCallback()


def report_epoch(run_id: str | None, stage: str, epoch: int, metrics: dict[str, float], show: bool) -> None:
    """One epoch's metrics to the stage's MLflow run and, with ``show``, as a plain line on stdout."""
    if run_id:
        tracking.log_metrics(run_id, metrics, step=epoch)
    if show:
        shown = ", ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items()))
        print(f"[{stage}] epoch {epoch}: {shown}", flush=True)
