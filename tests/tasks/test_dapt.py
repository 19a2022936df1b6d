"""Domain-adaptive pre-training on the tiny BERT."""

from __future__ import annotations

import pandas as pd
import pytest
from mlflow import MlflowClient
from transformers import AutoModelForMaskedLM

from tasks.dapt import continue_pretraining, domain_texts
from tasks.data import DataValidationError, prepare_dataset
from tasks.support import tracking
from tasks.support.config import load_config


@pytest.fixture
def tiny_setup(tmp_path):
    config = load_config("tiny", [f"work_dir={tmp_path / 'work'}"])
    return config, prepare_dataset(config)[0]


def test_dapt_lowers_perplexity_and_saves_an_mlm_checkpoint(tiny_setup, tiny_bert, tmp_path, mlflow_uri):
    config, data = tiny_setup
    with tracking.pipeline_run("exp", "parent") as parent, tracking.stage_run(parent, "dapt") as run_id:
        metrics = continue_pretraining(config, data, str(tiny_bert), tmp_path / "out", run_id)
    assert metrics["perplexity_after"] < metrics["perplexity_before"]
    # The tiny base has no MLM head; the saved checkpoint has one and loads without gaps.
    model, info = AutoModelForMaskedLM.from_pretrained(tmp_path / "out", output_loading_info=True)
    assert info["missing_keys"] == [] and model.config.vocab_size > 100
    assert (tmp_path / "out" / "tokenizer.json").is_file()
    assert not (tmp_path / "out" / "trainer").exists()
    history = MlflowClient(mlflow_uri).get_metric_history(run_id, "val_perplexity")
    assert [m.step for m in history] == [1]
    assert MlflowClient(mlflow_uri).get_metric_history(run_id, "train_loss")


def test_unlabelled_texts_join_the_domain_corpus(tiny_setup, tmp_path):
    config, data = tiny_setup
    extra = tmp_path / "unlabelled.csv"
    pd.DataFrame({"text": ["where is my parcel", "  ", "card declined at checkout"]}).to_csv(
        extra, index=False
    )
    with_extra = config.model_copy(update={"dapt": config.dapt.model_copy(update={"unlabelled_path": extra})})
    texts = domain_texts(with_extra, data)
    assert texts[-2:] == ["where is my parcel", "card declined at checkout"]
    assert len(texts) == data.split_counts["train"] + 2


def test_unlabelled_file_without_the_text_column_is_named(tiny_setup, tmp_path):
    config, data = tiny_setup
    extra = tmp_path / "notes.csv"
    pd.DataFrame({"body": ["hello"]}).to_csv(extra, index=False)
    with_extra = config.model_copy(update={"dapt": config.dapt.model_copy(update={"unlabelled_path": extra})})
    with pytest.raises(DataValidationError, match=r"notes\.csv: column 'text' not found .*: 'body'"):
        domain_texts(with_extra, data)
