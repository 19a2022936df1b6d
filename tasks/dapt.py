"""Domain-adaptive pre-training: continue masked-LM training of the base model on domain text."""

from __future__ import annotations

import math
import sys
from pathlib import Path

from prefect import task

from tasks.data import unlabelled_texts
from tasks.support import base_model, trainer
from tasks.support.config import PipelineConfig
from tasks.support.dataset import PreparedData

STAGE = "dapt"


def domain_texts(config: PipelineConfig, data: PreparedData) -> list[str]:
    """The training split's texts, plus the unlabelled texts the config names."""
    return data.frame("train")["text"].tolist() + unlabelled_texts(config)


def masked_positions_only(model):
    """The MLM model wrapped so that the vocabulary projection runs on masked tokens alone.

    Hugging Face MLM heads project every position onto the whole vocabulary and the loss then
    ignores the 85 % that were not masked; for MiniLM that projection is about half the
    compute. Models whose head is not one module (beside the encoder) are returned as they are.
    """
    import torch
    from torch.nn.functional import cross_entropy

    heads = [child for name, child in model.named_children() if name != model.base_model_prefix]
    if len(heads) != 1:
        return model

    class MaskedPositionsOnly(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder, self.head = model.base_model, heads[0]

        def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None):
            hidden = self.encoder(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state
            masked = labels != -100
            return {"loss": cross_entropy(self.head(hidden[masked]), labels[masked])}

    return MaskedPositionsOnly()


def _perplexity(hf_trainer, seed: int) -> float:
    """Held-out MLM perplexity, with the same masks every time it is measured."""
    from transformers import set_seed

    set_seed(seed)
    return math.exp(hf_trainer.evaluate(metric_key_prefix="heldout")["heldout_loss"])


def continue_pretraining(
    config: PipelineConfig, data: PreparedData, init: str, output: Path, run_id: str | None
) -> dict[str, float]:
    """Masked-LM training of ``init`` on the domain texts; held-out perplexity before and after."""
    from transformers import AutoModelForMaskedLM, AutoTokenizer, DataCollatorForLanguageModeling, set_seed

    settings = config.dapt
    set_seed(config.seed)  # a missing MLM head is initialised from the global generator
    tokenizer = AutoTokenizer.from_pretrained(init)
    # A checkpoint without an MLM head (the packaged MiniLM has none) gets one initialised here,
    # its decoder tied to the word embeddings.
    model = AutoModelForMaskedLM.from_pretrained(init)
    max_length = config.model.max_length
    hf_trainer = trainer.build_trainer(
        model=masked_positions_only(model),
        args=trainer.training_arguments(
            output,
            epochs=settings.epochs,
            batch_size=settings.batch_size,
            learning_rate=settings.learning_rate,
            seed=config.seed,
            prediction_loss_only=True,
        ),
        train_dataset=trainer.tokenize(tokenizer, domain_texts(config, data), max_length),
        eval_dataset=trainer.tokenize(tokenizer, data.frame("validation")["text"], max_length),
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm_probability=settings.mlm_probability),
        callbacks=[trainer.metrics_callback(run_id, STAGE, perplexity=True)],
    )
    before = _perplexity(hf_trainer, config.seed)
    hf_trainer.train()
    after = _perplexity(hf_trainer, config.seed)
    trainer.save_checkpoint(hf_trainer, model, tokenizer, output)
    return {"perplexity_before": before, "perplexity_after": after}


def cache_key(config: PipelineConfig, data: PreparedData) -> str:
    """Data digest + model and DAPT config + seed + code: what the checkpoint depends on."""
    return trainer.stage_key(
        STAGE,
        data.digest,
        config.model.model_dump(mode="json"),
        config.dapt.model_dump(mode="json"),
        config.seed,
        str(config.work_dir.resolve()),
        trainer.code_digest(sys.modules[__name__], trainer, base_model),
    )


def _task_cache_key(context, parameters) -> str:
    return cache_key(parameters["config"], parameters["data"])


@task(name="domain-adapt", cache_key_fn=_task_cache_key, persist_result=True, log_prints=True)
def domain_adapt(config: PipelineConfig, data: PreparedData) -> trainer.Checkpoint:
    """Prefect task: DAPT of the base model, a nested MLflow run; the base itself when disabled."""
    train = data.frame("train")["text"]
    init = base_model.base_for_run(config.model.teacher_base, config.work_dir, data.digest, train)
    key = cache_key(config, data)
    if not config.dapt.enabled:
        return trainer.Checkpoint(Path(init), key, "base", {})
    params = {"base_model": config.model.teacher_base, "init": init, "max_length": config.model.max_length}
    return trainer.tracked_stage(
        sys.modules[__name__], continue_pretraining, config, data, init, key,
        params | config.dapt.model_dump(mode="json"),
    )  # fmt: skip


if __name__ == "__main__":
    trainer.stage_main(continue_pretraining)
