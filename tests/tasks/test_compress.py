"""Export, fusion, static and dynamic INT8 and vocabulary trimming on the tiny classifier."""

from __future__ import annotations

import re
from dataclasses import replace

import numpy as np
import onnx
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from edgeroute.model import OnnxClassifier, load_tokenizer
from tasks.compress import (
    TEACHER_FP32,
    TEACHER_INT8,
    Recipe,
    Variant,
    compress,
    export_onnx,
    fallback_recipes,
    int8_products,
    op_counts,
    quantize,
    trim_vocabulary,
    weight_nodes,
)
from tasks.evaluate import batch_dependence

TEXTS = [
    "My refund has not arrived after 12 days.",
    "thanks!",
    "Can you tell me when order #123456 ships? My email is anna.12@example.com",
    "The delivery was great, but the headphones stopped working within a week and nobody answers.",
]


def _onnx(variant, labels, max_length=64):
    return OnnxClassifier(variant.model, load_tokenizer(variant.tokenizer, max_length), labels)


def _weight_bytes(model) -> int:
    return sum(onnx.numpy_helper.to_array(i).nbytes for i in onnx.load(str(model)).graph.initializer)


def test_onnx_logits_match_pytorch(tiny_classifier, tiny_compressed, tiny_prepared):
    _, data = tiny_prepared
    tokenizer = AutoTokenizer.from_pretrained(tiny_classifier)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_classifier).eval()
    with torch.no_grad():
        expected = model(
            **tokenizer(TEXTS, padding=True, truncation=True, max_length=64, return_tensors="pt")
        ).logits
    actual = _onnx(tiny_compressed.variants["fp32"], data.labels).logits(TEXTS)
    np.testing.assert_allclose(actual, expected.numpy(), atol=1e-4)


def test_int8_is_quantized_smaller_and_close(tiny_compressed, tiny_prepared):
    _, data = tiny_prepared
    fp32, int8 = tiny_compressed.variants["fp32"].model, tiny_compressed.variants["int8"].model
    counts = op_counts(int8)
    # Q, K, V, output and the 2 feed-forward MatMuls of both layers (the last one fed by the fused
    # GELU, whose type the quantizer is told), the pooler and the head are INT8; the attention
    # fusions stay off (their CPU kernels are slower): no (Q)Attention op. Static: no scale is
    # computed at run time.
    _, layers = weight_nodes(tiny_compressed.fused)
    head = ["/bert/pooler/dense/Gemm", "/classifier/Gemm"]
    assert sorted(int8_products(int8)) == sorted([*head, *(n for nodes in layers.values() for n in nodes)])
    assert not {
        "Attention",
        "QAttention",
        "SkipLayerNormalization",
        "BiasGelu",
        "DynamicQuantizeLinear",
    } & set(counts)
    # INT8 weights are a quarter of FP32's; in a model this small, the graph of quantize and
    # dequantize nodes weighs about as much as its weights, so the file shrinks by less.
    assert _weight_bytes(int8) < 0.3 * _weight_bytes(fp32)
    assert tiny_compressed.info["size_reduction_pct"] > 40
    texts = data.frame("test")["text"].tolist()
    agree = np.mean(
        np.array(_onnx(tiny_compressed.variants["fp32"], data.labels).predict(texts))
        == np.array(_onnx(tiny_compressed.variants["int8"], data.labels).predict(texts))
    )
    assert agree > 0.9


def test_weight_nodes_find_the_head_and_each_layer(tiny_compressed):
    head, layers = weight_nodes(tiny_compressed.fused)
    assert sorted(head) == ["/bert/pooler/dense/Gemm", "/classifier/Gemm"]
    assert sorted(layers) == [0, 1]
    assert all(len(nodes) == 6 for nodes in layers.values())  # Q, K, V, output, 2 feed-forward


def test_excluded_nodes_stay_fp32(tiny_compressed, tmp_path):
    head, _ = weight_nodes(tiny_compressed.fused)
    static = Recipe("head in FP32", True, True, tuple(head))
    path = quantize(tiny_compressed.fused, tmp_path / "q.onnx", static, tiny_compressed.calibration)
    assert len(int8_products(path)) == 2 * 6 and not set(head) & set(int8_products(path))
    dynamic = Recipe("head in FP32", True, True, tuple(head), static=False)
    quantized = onnx.load(str(quantize(tiny_compressed.fused, tmp_path / "d.onnx", dynamic)))
    ops = {node.name: node.op_type for node in quantized.graph.node}
    # The dynamic quantizer splits Gemm into MatMul + Add; excluded, the MatMul stays float.
    assert ops["/classifier/Gemm_MatMul"] == ops["/bert/pooler/dense/Gemm_MatMul"] == "MatMul"
    assert list(ops.values()).count("MatMulInteger") == 2 * 6


def test_static_int8_answers_a_text_the_same_alone_and_in_any_batch(tiny_compressed, tiny_prepared):
    # Fixed scales quantize each element on its own, and padded positions are masked out of
    # attention exactly (their softmax weight is 0, which INT8 represents exactly): the integer
    # products of a text's rows are the same in any batch, so only float rounding could differ.
    _, data = tiny_prepared
    texts = [*data.frame("test")["text"], "ok", "x " * 300]
    for name, recipe in {
        "static": tiny_compressed.recipe,
        "dynamic": replace(tiny_compressed.recipe, static=False),
    }.items():
        path = quantize(
            tiny_compressed.fused,
            tiny_compressed.directory / f"batch-{name}.onnx",
            recipe,
            tiny_compressed.calibration,
        )
        int8 = _onnx(Variant(path, tiny_compressed.variants["int8"].tokenizer), data.labels)
        moved = batch_dependence(int8, texts)
        if name == "static":
            assert moved == {
                "batch_label_agreement": 1.0,
                "batch_max_probability_change": pytest.approx(0, abs=1e-6),
            }
        else:  # a scale per call: a text's answer moves with its batch-mates
            assert moved["batch_max_probability_change"] > 1e-3


def test_every_calibration_method_gives_a_batch_independent_model(tiny_compressed, tiny_prepared, tmp_path):
    _, data = tiny_prepared
    texts = data.frame("test")["text"].tolist()
    ranges = set()
    for method in ("minmax", "percentile", "entropy"):
        recipe = replace(tiny_compressed.recipe, calibration=method)
        path = quantize(
            tiny_compressed.fused, tmp_path / f"{method}.onnx", recipe, tiny_compressed.calibration
        )
        moved = batch_dependence(
            _onnx(Variant(path, tiny_compressed.variants["int8"].tokenizer), data.labels), texts
        )
        assert moved["batch_label_agreement"] == 1.0 and moved["batch_max_probability_change"] < 1e-6
        ranges.add(path.read_bytes())
    assert len(ranges) == 3  # the methods choose different scales


def test_fallback_recipes_are_bounded_and_grow_the_fp32_part(tiny_compressed):
    primary = tiny_compressed.recipe
    recipes = fallback_recipes(primary, tiny_compressed.fused, [1, 0], limit=10)
    assert [r.name for r in recipes] == [
        "static, percentile calibration",
        "static, entropy calibration",
        "static, attention and GELU-fed products in FP32",
        "static, attention, GELU-fed products, head in FP32",
        "static, attention, GELU-fed products, head and layer 1 in FP32",
        "static, attention, GELU-fed products, head and layers 1, 0 in FP32",
        "dynamic",
    ]
    # Per layer: scores x keys, weights x values, and the GELU-fed output product.
    assert [len(r.exclude) for r in recipes] == [0, 0, 6, 8, 13, 18, 0]
    assert [r.static for r in recipes] == [True] * 6 + [False]
    bounded = fallback_recipes(primary, tiny_compressed.fused, [1, 0], limit=3)
    assert [r.name for r in bounded][-1] == "dynamic" and len(bounded) == 3
    dynamic = fallback_recipes(replace(primary, static=False), tiny_compressed.fused, [1, 0], limit=10)
    assert [r.name for r in dynamic] == [
        "per_channel=False",
        "head in FP32",
        "head and layer 1 in FP32",
        "head and layers 1, 0 in FP32",
    ]
    assert [len(r.exclude) for r in dynamic] == [0, 2, 8, 14]


def test_vocabulary_trimming_keeps_predictions_on_in_vocabulary_text(
    tiny_classifier, tiny_prepared, tmp_path
):
    _, data = tiny_prepared
    corpus = data.frame("train")["text"].tolist()[:60]
    info = trim_vocabulary(tiny_classifier, corpus, tmp_path / "trimmed")
    assert info["vocab_kept"] < info["vocab_original"]
    trimmed_tokenizer = AutoTokenizer.from_pretrained(tmp_path / "trimmed")
    assert trimmed_tokenizer.vocab_size == info["vocab_kept"]
    full = export_onnx(tiny_classifier, tmp_path / "full")
    small = export_onnx(tmp_path / "trimmed", tmp_path / "small")
    # Numbers are spelled digit by digit in the trimmed vocabulary: compare the texts without any.
    wordy = [text for text in corpus if not re.search(r"\d\d", text)]
    assert len(wordy) > 20
    full_logits = OnnxClassifier(
        full, load_tokenizer(full.parent / "tokenizer.json", 64), data.labels
    ).logits(wordy)
    small_logits = OnnxClassifier(
        small, load_tokenizer(small.parent / "tokenizer.json", 64), data.labels
    ).logits(wordy)
    np.testing.assert_allclose(small_logits, full_logits, atol=1e-4)
    # An unseen word is spelled from kept characters, not lost to [UNK].
    ids = trimmed_tokenizer("zzyzx")["input_ids"]
    assert trimmed_tokenizer.unk_token_id not in ids


def test_with_a_teacher_the_cloud_tier_is_the_teacher_and_its_int8_twin_is_the_reference(
    tiny_student, tiny_classifier, tiny_prepared, tmp_path
):
    config, data = tiny_prepared
    corpus = data.frame("train")["text"].tolist()
    calibration = {"calibration_texts": data.frame("calibration")["text"].tolist(), "max_length": 64}
    compressed = compress(
        tiny_student, corpus, config.compress, tmp_path / "compress", teacher=tiny_classifier, **calibration
    )
    assert set(compressed.variants) == {"fp32", "int8", TEACHER_FP32, TEACHER_INT8}
    assert compressed.cloud_name == TEACHER_FP32 and compressed.cloud == compressed.variants[TEACHER_FP32]
    softmax = {name: op_counts(v.model).get("Softmax", 0) for name, v in compressed.variants.items()}
    assert softmax == {"fp32": 1, "int8": 1, TEACHER_FP32: 2, TEACHER_INT8: 2}
    info = compressed.info
    assert info["size_reduction_vs_cloud_pct"] > info["size_reduction_pct"] > 0
    # Without a teacher the cloud tier is the edge model's own FP32 twin.
    alone = compress(tiny_student, corpus, config.compress, tmp_path / "alone", **calibration)
    assert alone.cloud_name == "fp32" and TEACHER_FP32 not in alone.variants


def test_a_token_count_floor_trims_rare_pieces_and_still_spells_them(
    tiny_classifier, tiny_prepared, tmp_path
):
    _, data = tiny_prepared
    corpus = data.frame("train")["text"].tolist()
    every = trim_vocabulary(tiny_classifier, corpus, tmp_path / "every")
    frequent = trim_vocabulary(tiny_classifier, corpus, tmp_path / "frequent", min_count=5)
    assert every["vocab_seen"] == frequent["vocab_seen"]
    assert frequent["vocab_kept"] < every["vocab_kept"] <= every["vocab_original"]
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "frequent")
    encoded = tokenizer(corpus[:100])["input_ids"]
    assert all(tokenizer.unk_token_id not in ids for ids in encoded)


def test_the_trimmed_vocabulary_keeps_no_number_of_the_training_texts(tiny_classifier, tmp_path):
    corpus = ["order 123456 for account 98765432 arrived", "my card 4111 1111 1111 1111 was charged twice"]
    trim_vocabulary(tiny_classifier, corpus, tmp_path / "trimmed")
    kept = (tmp_path / "trimmed" / "vocab.txt").read_text().split()
    assert not [token for token in kept if sum(c.isdigit() for c in token) > 1]
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "trimmed")
    assert tokenizer.tokenize("123456") == ["1", "##2", "##3", "##4", "##5", "##6"]
