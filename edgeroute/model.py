"""The ONNX text classifier that the edge (and a local cloud tier) runs.

`tokenizers` for encoding, onnxruntime for inference, numpy in between: no torch, no
transformers. Each batch is padded to its own longest text, and texts are sorted by length
before batching so that short queries never pay for long ones (length bucketing); a single
text skips all of that.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Encoding, Tokenizer

# ORT fusions whose fused CPU kernels are slower than the ops they replace (``bench/graph.py``).
SLOW_FUSIONS = ("SkipLayerNormFusion", "BiasGeluFusion")


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    scaled = logits / temperature
    scaled -= scaled.max(axis=-1, keepdims=True)
    exp = np.exp(scaled)
    return exp / exp.sum(axis=-1, keepdims=True)


def load_tokenizer(path: Path, max_length: int) -> Tokenizer:
    """A fast tokenizer that truncates to ``max_length`` and pads each batch to its longest."""
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.enable_truncation(max_length)
    pad_id = tokenizer.token_to_id("[PAD]")
    tokenizer.enable_padding(pad_id=0 if pad_id is None else pad_id, pad_token="[PAD]")
    return tokenizer


class OnnxClassifier:
    """Batched ``predict_proba`` over an ONNX sequence classifier."""

    def __init__(
        self,
        model_path: Path,
        tokenizer: Tokenizer,
        labels: Sequence[str],
        *,
        threads: int = 1,
        batch_size: int = 32,
    ) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(
            str(model_path),
            options,
            providers=["CPUExecutionProvider"],
            disabled_optimizers=list(SLOW_FUSIONS),
        )
        inputs = {i.name for i in self.session.get_inputs()}
        self.takes_mask = "attention_mask" in inputs
        self.takes_token_types = "token_type_ids" in inputs
        self.outputs = [self.session.get_outputs()[0].name]
        self.tokenizer = tokenizer
        self.labels = list(labels)
        self.batch_size = batch_size
        self.path = Path(model_path)

    def run(self, encodings: Sequence[Encoding]) -> np.ndarray:
        """Raw scores for encodings padded to one length (one text, or a batch)."""
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        feed = {"input_ids": ids}
        if self.takes_mask:
            feed["attention_mask"] = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        if self.takes_token_types:  # one sentence per text: every type id is 0
            feed["token_type_ids"] = np.zeros_like(ids)
        return self.session.run(self.outputs, feed)[0]

    def logits_and_tokens(self, texts: Sequence[str]) -> tuple[np.ndarray, list[list[str]]]:
        """Raw scores, one row per text in the order given, and each text's word pieces."""
        if len(texts) == 1:  # the edge's common case: no sorting, no batch machinery
            encoding = self.tokenizer.encode(texts[0])
            return self.run([encoding]), [encoding.tokens]
        out = np.empty((len(texts), len(self.labels)), dtype=np.float32)
        tokens: list[list[str]] = [[] for _ in texts]
        order = np.argsort([len(t) for t in texts], kind="stable")
        for start in range(0, len(texts), self.batch_size):
            chunk = order[start : start + self.batch_size]
            encodings = self.tokenizer.encode_batch([texts[i] for i in chunk])
            out[chunk] = self.run(encodings)
            for i, encoding in zip(chunk, encodings, strict=True):
                tokens[i] = encoding.tokens
        return out, tokens

    def logits(self, texts: Sequence[str]) -> np.ndarray:
        """Raw scores, one row per text, in the order given."""
        return self.logits_and_tokens(texts)[0]

    def predict_proba(self, texts: Sequence[str], temperature: float = 1.0) -> np.ndarray:
        return softmax(self.logits(texts), temperature)

    def predict(self, texts: Sequence[str]) -> list[str]:
        return [self.labels[i] for i in self.logits(texts).argmax(axis=-1)]
