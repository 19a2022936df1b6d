"""Offline base models: the tiny BERT of the test kit and the packaged MiniLM."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModel, AutoTokenizer

from tasks.support.base_model import PACKAGED, TINY, build_tiny_bert, resolve_base_model


def test_tiny_bert_is_an_ordinary_checkpoint(tiny_bert):
    config = AutoConfig.from_pretrained(tiny_bert)
    assert (config.model_type, config.num_hidden_layers, config.hidden_size) == ("bert", 2, 32)
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    model = AutoModel.from_pretrained(tiny_bert)
    batch = tokenizer(["my refund has not arrived", "thanks!"], padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    assert hidden.shape == (2, batch["input_ids"].shape[1], 32)


def test_tiny_vocabulary_is_trained_on_the_corpus(tiny_bert):
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    ids = tokenizer("refund delivery invoice")["input_ids"]
    assert tokenizer.unk_token_id not in ids
    assert 100 < tokenizer.vocab_size <= 1000


def test_tiny_bert_is_deterministic(tmp_path, tiny_corpus):
    first = build_tiny_bert(tiny_corpus, tmp_path / "a")
    second = build_tiny_bert(tiny_corpus, tmp_path / "b")
    assert (first / "vocab.txt").read_text() == (second / "vocab.txt").read_text()
    a, b = AutoModel.from_pretrained(first), AutoModel.from_pretrained(second)
    assert all(
        torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )


def test_resolve_base_model(tmp_path, tiny_corpus):
    packaged = resolve_base_model(PACKAGED, [], tmp_path)
    assert AutoConfig.from_pretrained(packaged).num_hidden_layers == 6
    tiny = resolve_base_model(TINY, tiny_corpus, tmp_path)
    assert AutoConfig.from_pretrained(tiny).hidden_size == 32
    assert resolve_base_model("bert-base-uncased", [], tmp_path) == "bert-base-uncased"


@pytest.mark.slow
def test_packaged_model_encodes_the_domain_offline(tiny_corpus):
    path = resolve_base_model(PACKAGED, [], Path("unused"))
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path)
    batch = tokenizer(tiny_corpus[:16], padding=True, truncation=True, max_length=128, return_tensors="pt")
    ids = batch["input_ids"][batch["attention_mask"].bool()]
    assert (ids == tokenizer.unk_token_id).float().mean() < 0.01
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    assert hidden.shape[-1] == 384 and torch.isfinite(hidden).all()
