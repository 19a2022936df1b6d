"""The ONNX text classifier that the edge (and a local cloud tier) runs.

`tokenizers` for encoding, onnxruntime for inference, numpy in between: no torch, no
transformers. Texts are sorted by length into batches of similar length (length bucketing),
each padded to its own longest text, so that short queries never pay for long ones; a single
text skips all of that.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Encoding, Tokenizer

# A model call's fixed cost, in padded tokens' worth of compute: a batch stops growing when
# padding it further would cost more than starting another. Set generously: on the demo model
# a call's fixed cost measured about 1 ms, 7 to 10 tokens' worth; 64 favours fuller batches.
CALL_COST_TOKENS = 64
# ORT fusions whose fused CPU kernels are slower than the ops they replace (fused skip-layer-norm
# 84 us against 21 us for layer norm at 22 x 384, ORT 1.32; end to end: ``bench/graph.py``).
SLOW_FUSIONS = ("SkipLayerNormFusion", "BiasGeluFusion")


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    scaled = logits / temperature
    scaled -= scaled.max(axis=-1, keepdims=True)
    exp = np.exp(scaled)
    return exp / exp.sum(axis=-1, keepdims=True)


def load_tokenizer(source: Path | bytes, max_length: int) -> Tokenizer:
    """A fast tokenizer (its ``tokenizer.json``, or that file's bytes) that truncates to
    ``max_length``; the classifier pads each batch itself."""
    if isinstance(source, bytes):
        tokenizer = Tokenizer.from_str(source.decode("utf-8"))
    else:
        tokenizer = Tokenizer.from_file(str(source))
    tokenizer.enable_truncation(max_length)
    tokenizer.no_padding()
    return tokenizer


def length_buckets(
    lengths: Sequence[int], batch_size: int, call_cost: int = CALL_COST_TOKENS
) -> list[np.ndarray]:
    """Indices of ``lengths`` in batches of similar length, shortest first.

    Sorted by length, a batch grows until it holds ``batch_size`` texts or until padding it to
    the next text's length would cost more padded tokens than a model call's fixed cost.
    """
    order = np.argsort(lengths, kind="stable")
    buckets: list[list[int]] = []
    longest = 0
    for i in order:
        length = lengths[i]
        current = buckets[-1] if buckets else None
        if current is None or len(current) >= batch_size or len(current) * (length - longest) > call_cost:
            buckets.append([i])
        else:
            current.append(i)
        longest = length
    return [np.array(bucket) for bucket in buckets]


class OnnxClassifier:
    """Batched ``predict_proba`` over an ONNX sequence classifier: a model file, or its bytes."""

    def __init__(
        self,
        model: Path | bytes,
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
            model if isinstance(model, bytes) else str(model),
            options,
            providers=["CPUExecutionProvider"],
            disabled_optimizers=list(SLOW_FUSIONS),
        )
        inputs = {i.name for i in self.session.get_inputs()}
        pad_id = tokenizer.token_to_id("[PAD]")
        self.pad_id = 0 if pad_id is None else pad_id
        self.takes_mask = "attention_mask" in inputs
        self.takes_token_types = "token_type_ids" in inputs
        self.outputs = [self.session.get_outputs()[0].name]
        self.tokenizer = tokenizer
        self.labels = list(labels)
        self.batch_size = batch_size

    def run(self, encodings: Sequence[Encoding]) -> np.ndarray:
        """Raw scores for encodings, padded here to the longest of them."""
        lengths = [len(e.ids) for e in encodings]
        ids = np.full((len(encodings), max(lengths)), self.pad_id, dtype=np.int64)
        for row, encoding in enumerate(encodings):
            ids[row, : lengths[row]] = encoding.ids
        feed = {"input_ids": ids}
        if self.takes_mask:
            feed["attention_mask"] = (np.arange(ids.shape[1]) < np.array(lengths)[:, None]).astype(np.int64)
        if self.takes_token_types:  # one sentence per text: every type id is 0
            feed["token_type_ids"] = np.zeros_like(ids)
        return self.session.run(self.outputs, feed)[0]

    def logits_and_tokens(self, texts: Sequence[str]) -> tuple[np.ndarray, list[list[str]]]:
        """Raw scores, one row per text in the order given, and each text's word pieces."""
        if len(texts) == 1:  # the edge's common case: no bucketing
            encoding = self.tokenizer.encode(texts[0])
            return self.run([encoding]), [encoding.tokens]
        encodings = self.tokenizer.encode_batch(list(texts))
        out = np.empty((len(texts), len(self.labels)), dtype=np.float32)
        for bucket in length_buckets([len(e.ids) for e in encodings], self.batch_size):
            out[bucket] = self.run([encodings[i] for i in bucket])
        return out, [e.tokens for e in encodings]

    def logits(self, texts: Sequence[str]) -> np.ndarray:
        """Raw scores, one row per text, in the order given."""
        return self.logits_and_tokens(texts)[0]

    def predict_proba(self, texts: Sequence[str], temperature: float = 1.0) -> np.ndarray:
        return softmax(self.logits(texts), temperature)

    def predict(self, texts: Sequence[str]) -> list[str]:
        return [self.labels[i] for i in self.logits(texts).argmax(axis=-1)]
