"""Compression: export to ONNX, optional vocabulary trimming and graph fusion, INT8.

Static INT8 (QDQ, activation scales calibrated once on the calibration split) is the edge recipe:
each element is quantized with a fixed scale, so a text's answer cannot depend on the texts that
share its model call. Dynamic INT8 picks an activation scale per call from the whole batch; it
stays as a fallback, served one request at a time.
"""

from __future__ import annotations

import json
import re
import shutil
import string
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, get_args

import numpy as np
import pandas as pd
from prefect import task

from edgeroute.model import load_tokenizer
from tasks.support import tracking
from tasks.support.config import CalibrationName, CompressConfig, PipelineConfig
from tasks.support.dataset import PreparedData
from tasks.support.trainer import Checkpoint

if TYPE_CHECKING:
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod

# Operators that hold the weights quantization turns into INT8.
QUANTIZABLE = ("MatMul", "Gemm", "Attention")
# Dynamic INT8's products by an INT8 weight.
DYNAMIC_PRODUCTS = {"MatMulInteger", "QAttention", "DynamicQuantizeMatMul", "QGemm"}
# ORT contrib ops of a fused graph whose output has its input's type; ONNX shape inference does
# not know them, and the static quantizer skips a tensor of unknown type.
TYPE_PRESERVING_CONTRIB = {"Gelu", "FastGelu", "BiasGelu"}
TEACHER_FP32, TEACHER_INT8 = "teacher_fp32", "teacher_int8"
DIGIT_RUN = re.compile(r"\d\d")
LAYER_NODE = re.compile(r"layer\.(\d+)/")
_HEAD = re.compile(r"^/(classifier|pre_classifier)/|/pooler/")


@dataclass(frozen=True)
class Recipe:
    """One way to quantize: the knobs the accuracy-aware fallback turns."""

    name: str
    per_channel: bool
    quantize_embeddings: bool
    exclude: tuple[str, ...] = field(default=())
    static: bool = True
    calibration: CalibrationName = "minmax"

    @property
    def batch_independent(self) -> bool:
        """Static scales quantize each element on its own: a text's answer ignores its batch-mates."""
        return self.static


@dataclass(frozen=True)
class CalibrationSet:
    """The texts static scales are calibrated on, with the tokenizer of the model being quantized.

    Each text runs alone, unpadded: padding would put positions no served text has into the
    ranges, and ORT's histogram collectors need tensors of one shape per call.
    """

    texts: tuple[str, ...]
    tokenizer: Path
    max_length: int

    def reader(self, model: Path) -> CalibrationDataReader:
        import onnx
        from onnxruntime.quantization import CalibrationDataReader

        names = {i.name for i in onnx.load(str(model), load_external_data=False).graph.input}
        tokenizer = load_tokenizer(self.tokenizer, self.max_length)
        feeds = []
        for encoding in tokenizer.encode_batch(list(self.texts)):
            ids = np.array([encoding.ids], dtype=np.int64)
            feed = {
                "input_ids": ids,
                "attention_mask": np.ones_like(ids),
                "token_type_ids": np.zeros_like(ids),
            }
            feeds.append({name: value for name, value in feed.items() if name in names})

        class Reader(CalibrationDataReader):
            """One text per call; ``set_range`` lets ORT collect them one call at a time."""

            def __init__(self) -> None:
                self.start, self.end = 0, len(feeds)

            def __len__(self) -> int:
                return len(feeds)

            def set_range(self, start_index: int, end_index: int) -> None:
                self.start, self.end = start_index, end_index

            def get_next(self) -> dict[str, np.ndarray] | None:
                if self.start >= self.end:
                    return None
                self.start += 1
                return feeds[self.start - 1]

        return Reader()


def calibration_method(name: CalibrationName) -> CalibrationMethod:
    from onnxruntime.quantization import CalibrationMethod

    methods = {"minmax": "MinMax", "percentile": "Percentile", "entropy": "Entropy"}
    return CalibrationMethod[methods[name]]


def size_mb(path: Path) -> float:
    return path.stat().st_size / 1e6


def export_onnx(checkpoint: Path, output: Path) -> Path:
    """The classifier as FP32 ONNX (optimum), with its tokenizer files beside it."""
    from optimum.exporters.onnx import main_export

    main_export(
        str(checkpoint),
        output=str(output),
        task="text-classification",
        do_validation=False,
        local_files_only=True,
        library_name="transformers",
    )
    return output / "model.onnx"


def fuse_graph(model: Path, output: Path) -> Path:
    """The ORT transformer fusions that pay on CPU, before quantization: layer norm and GELU.

    Attention, skip-layer-norm and bias-GELU fusions stay off: on this project's CPUs their
    fused kernels (QAttention, SkipLayerNormalization, BiasGelu) are slower than the plain ops
    (profiled with ORT; end to end the gain is small, ``bench/graph.py``); the runtime keeps
    ORT from re-creating the last two (``edgeroute.model.SLOW_FUSIONS``). The embedding
    layer-norm fusion stays off as well: quantizing it needs calibration data.
    """
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    options = FusionOptions("bert")
    options.enable_attention = False
    options.enable_skip_layer_norm = False
    options.enable_bias_skip_layer_norm = False
    options.enable_bias_gelu = False
    options.enable_embed_layer_norm = False
    optimized = optimize_model(
        str(model), model_type="bert", num_heads=0, hidden_size=0, optimization_options=options
    )
    _type_contrib_outputs(optimized.model)
    optimized.save_model_to_file(str(output))
    return output


def _type_contrib_outputs(model) -> None:
    """Declare the type of each fused contrib op's output (its input's), so that the static
    quantizer quantizes what consumes it instead of skipping it as of unknown type."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model).graph
    known = {v.name for v in [*inferred.value_info, *inferred.input, *inferred.output]}
    types = {v.name: v.type.tensor_type.elem_type for v in [*inferred.value_info, *inferred.input]}
    types |= {i.name: i.data_type for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type in TYPE_PRESERVING_CONTRIB and node.input[0] in types:
            for name in node.output:
                if name not in known:
                    model.graph.value_info.append(
                        onnx.helper.make_tensor_value_info(name, types[node.input[0]], None)
                    )


def quantize(model: Path, output: Path, recipe: Recipe, calibration: CalibrationSet | None = None) -> Path:
    """INT8 weights (per channel or per tensor); activations with static scales calibrated on
    ``calibration``, or with a scale per call (dynamic).

    Calibrated ranges are cached beside ``model`` per method, so that the fallback's recipes,
    which differ only in what they quantize, calibrate once.
    """
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

    ops = [*QUANTIZABLE, "Gather"] if recipe.quantize_embeddings else list(QUANTIZABLE)
    # The quantizer rewrites Gemm as MatMul + Add first, renaming it "<name>_MatMul".
    exclude = [n for name in recipe.exclude for n in (name, f"{name}_MatMul")]
    if not recipe.static:
        quantize_dynamic(
            model,
            output,
            op_types_to_quantize=ops,
            per_channel=recipe.per_channel,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=exclude,
            # Fused graphs have tensors whose type the quantizer cannot infer (DESIGN §6).
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
        return output
    if calibration is None:
        raise ValueError(f"recipe {recipe.name!r} is static: it needs calibration texts")
    quantize_static(
        model,
        output,
        calibration.reader(model),
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=ops,
        per_channel=recipe.per_channel,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=exclude,
        calibrate_method=calibration_method(recipe.calibration),
        calibration_cache_path=model.with_name(f"{model.stem}.{recipe.calibration}-ranges.json"),
        # One text per collection call (see CalibrationSet).
        extra_options={"CalibStridedMinMax": 1},
    )
    return output


def op_counts(model: Path) -> dict[str, int]:
    import onnx

    counts: dict[str, int] = {}
    for node in onnx.load(str(model), load_external_data=False).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def int8_products(model: Path) -> list[str]:
    """The nodes that multiply by an INT8 weight matrix: dynamic INT8's integer ops, and static
    INT8's float ops whose weight is dequantized from INT8 (ORT runs those as integer kernels)."""
    import onnx

    graph = onnx.load(str(model), load_external_data=False).graph
    weights = {initializer.name for initializer in graph.initializer}
    dequantized = {
        n.output[0] for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] in weights
    }
    return [
        node.name
        for node in graph.node
        if node.op_type in DYNAMIC_PRODUCTS
        or (node.op_type in QUANTIZABLE and dequantized.intersection(node.input))
    ]


def weight_nodes(model: Path) -> tuple[list[str], dict[int, list[str]]]:
    """The quantizable nodes with a weight, of the classifier head and of each encoder layer."""
    import onnx

    graph = onnx.load(str(model), load_external_data=False).graph
    weights = {initializer.name for initializer in graph.initializer}
    head: list[str] = []
    layers: dict[int, list[str]] = {}
    for node in graph.node:
        if node.op_type not in QUANTIZABLE or not weights.intersection(node.input):
            continue
        if _HEAD.search(node.name):
            head.append(node.name)
        elif match := LAYER_NODE.search(node.name):
            layers.setdefault(int(match.group(1)), []).append(node.name)
    return head, layers


def sensitive_nodes(model: Path) -> list[str]:
    """The matrix products whose activations fixed scales serve worst: attention's (scores and
    softmax output, activation by activation) and those fed by GELU, whose output is skewed."""
    import onnx

    graph = onnx.load(str(model), load_external_data=False).graph
    weights = {initializer.name for initializer in graph.initializer}
    producer = {output: node.op_type for node in graph.node for output in node.output}
    return [
        node.name
        for node in graph.node
        if node.op_type == "MatMul"
        and (
            not weights.intersection(node.input)
            or any(producer.get(name) in {"Gelu", "FastGelu", "BiasGelu"} for name in node.input)
        )
    ]


def fallback_recipes(primary: Recipe, model: Path, layer_order: Iterable[int], limit: int) -> list[Recipe]:
    """The bounded list tried after ``primary`` fails.

    For a static primary: the other calibration methods, then attention and GELU-fed products in
    FP32 (INC's accuracy-aware fallback keeps such ops in FP32), then also the classifier head and
    the most sensitive encoder layers, one more each time; last, dynamic INT8, which the gate
    lets serve only one request at a time. For a dynamic primary: the other weight granularity,
    then the head, then layers.
    """
    head, layers = weight_nodes(model)

    def like(name: str, exclude: tuple[str, ...] = (), **changes) -> Recipe:
        return replace(primary, name=name, exclude=exclude, **changes)

    if primary.static:
        recipes = [
            like(f"static, {method} calibration", calibration=method)
            for method in get_args(CalibrationName)
            if method != primary.calibration
        ]
        excluded = tuple(sensitive_nodes(model))
        recipes.append(like("static, attention and GELU-fed products in FP32", excluded))
        prefix = "static, attention, GELU-fed products, "
    else:
        recipes = [like(f"per_channel={not primary.per_channel}", per_channel=not primary.per_channel)]
        excluded, prefix = (), ""
    excluded += tuple(head)
    recipes.append(like(f"{prefix}head in FP32", excluded))
    kept: list[int] = []
    for layer in layer_order:
        kept.append(layer)
        excluded = tuple(dict.fromkeys((*excluded, *layers[layer])))  # the GELU-fed ones are there already
        recipes.append(
            like(
                f"{prefix}head and layer{'s' if len(kept) > 1 else ''} {', '.join(map(str, kept))} in FP32",
                excluded,
            )
        )
    if primary.static:
        return [*recipes[: limit - 1], like("dynamic", static=False)][:limit]
    return recipes[:limit]


def trim_vocabulary(
    checkpoint: Path, corpus: Iterable[str], output: Path, min_count: int = 1
) -> dict[str, int]:
    """Keep the tokens ``corpus`` uses at least ``min_count`` times, the special tokens and single
    characters; remap the embedding matrix and the WordPiece vocabulary consistently and save a
    new checkpoint. A dropped word is spelled by the pieces that are kept."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, BertTokenizerFast

    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    if not isinstance(tokenizer, BertTokenizerFast):
        raise ValueError(
            f"vocabulary trimming needs a WordPiece (BERT) tokenizer, {checkpoint} has "
            f"{type(tokenizer).__name__}; set compress.trim_vocabulary=false"
        )
    vocab = tokenizer.get_vocab()
    counts: Counter[int] = Counter()
    for start in range(0, len(corpus := list(corpus)), 1000):
        for ids in tokenizer(corpus[start : start + 1000], add_special_tokens=False)["input_ids"]:
            counts.update(ids)
    by_id = {i: token for token, i in vocab.items()}
    # A piece with two digits or more can be a fragment of an account, order or card number of
    # the training texts, and tokenizer.json ships in the bundle: numbers are spelled digit by digit.
    used = {i for i, count in counts.items() if count >= min_count and not DIGIT_RUN.search(by_id[i])} | set(
        tokenizer.all_special_ids
    )
    # Single printable characters (and their ## forms) keep every unseen word spellable.
    for char in string.printable.strip():
        for token in (char, f"##{char}"):
            if token in vocab:
                used.add(vocab[token])
    kept = sorted(used)
    model = AutoModelForSequenceClassification.from_pretrained(checkpoint)
    old = model.get_input_embeddings()
    new = torch.nn.Embedding(len(kept), old.embedding_dim, padding_idx=kept.index(tokenizer.pad_token_id))
    new.weight.data = old.weight.data[torch.tensor(kept)].clone()
    model.set_input_embeddings(new)
    model.config.vocab_size = len(kept)
    model.config.pad_token_id = kept.index(tokenizer.pad_token_id)
    output.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output)
    (output / "vocab.txt").write_text("\n".join(by_id[i] for i in kept) + "\n", encoding="utf-8")
    init = tokenizer.init_kwargs
    BertTokenizerFast(
        vocab_file=str(output / "vocab.txt"),
        do_lower_case=init.get("do_lower_case", True),
        strip_accents=init.get("strip_accents"),
        tokenize_chinese_chars=init.get("tokenize_chinese_chars", True),
        model_max_length=tokenizer.model_max_length,
    ).save_pretrained(output)
    for name in ("labels.json",):
        if (checkpoint / name).is_file():
            shutil.copyfile(checkpoint / name, output / name)
    return {"vocab_original": len(vocab), "vocab_seen": len(counts), "vocab_kept": len(kept)}


@dataclass(frozen=True)
class Variant:
    """One ONNX model and the tokenizer it was exported with."""

    model: Path
    tokenizer: Path


@dataclass(frozen=True)
class Compressed:
    """The edge model's FP32 reference, its primary INT8 model and, with trimming, INT8 at full
    vocabulary; with a distilled student, also the teacher's FP32 model (the cloud tier) and its
    INT8 twin (what the edge would serve without distillation), for the benchmark.

    ``fused`` is the FP32 graph the INT8 models are quantized from, and ``calibration`` the
    texts its static scales come from, for the fallback.
    """

    directory: Path
    variants: dict[str, Variant]
    fused: Path
    recipe: Recipe
    info: dict[str, float]
    calibration: CalibrationSet

    @property
    def cloud_name(self) -> str:
        """The cloud tier's variant: the teacher, which is the edge model's own FP32 without distillation."""
        return TEACHER_FP32 if TEACHER_FP32 in self.variants else "fp32"

    @property
    def cloud(self) -> Variant:
        return self.variants[self.cloud_name]


def primary_recipe(settings: CompressConfig) -> Recipe:
    static = settings.quantization == "static"
    name = f"static, {settings.calibration_method} calibration" if static else "dynamic"
    return Recipe(
        name, settings.per_channel, settings.quantize_embeddings, (), static, settings.calibration_method
    )


def _fused(onnx_model: Path, settings: CompressConfig, output: Path) -> Path:
    return fuse_graph(onnx_model, output) if settings.optimize else onnx_model


def compress(
    checkpoint: Path,
    corpus: list[str],
    settings: CompressConfig,
    output: Path,
    teacher: Path | None = None,
    *,
    calibration_texts: Sequence[str],
    max_length: int,
) -> Compressed:
    """Export FP32; optionally trim the vocabulary; fuse; quantize with the primary recipe, its
    static scales calibrated on ``calibration_texts``.

    ``teacher`` (the checkpoint ``checkpoint`` was distilled from) is exported too, as the cloud
    tier, and quantized at full vocabulary with dynamic INT8 as the benchmark's reference (what
    the edge served before distillation and static INT8).
    """
    fp32 = export_onnx(checkpoint, output / "fp32")
    recipe = primary_recipe(settings)
    texts = tuple(calibration_texts[: settings.calibration_samples])
    variants = {"fp32": Variant(fp32, fp32.parent / "tokenizer.json")}
    info: dict[str, float] = {"fp32_size_mb": size_mb(fp32)}
    if teacher is not None:
        teacher_fp32 = export_onnx(teacher, output / "teacher")
        teacher_int8 = quantize(
            _fused(teacher_fp32, settings, output / "teacher-fused.onnx"),
            output / "teacher-int8.onnx",
            replace(recipe, name="dynamic", static=False),
        )
        tokenizer = teacher_fp32.parent / "tokenizer.json"
        variants |= {
            TEACHER_FP32: Variant(teacher_fp32, tokenizer),
            TEACHER_INT8: Variant(teacher_int8, tokenizer),
        }
        info |= {"teacher_fp32_size_mb": size_mb(teacher_fp32), "teacher_int8_size_mb": size_mb(teacher_int8)}
    cloud_model = variants[TEACHER_FP32].model if teacher is not None else fp32
    edge_onnx = fp32
    if settings.trim_vocabulary:
        info |= trim_vocabulary(checkpoint, corpus, output / "trimmed-checkpoint", settings.min_token_count)
        edge_onnx = export_onnx(output / "trimmed-checkpoint", output / "trimmed")
        full = quantize(
            _fused(fp32, settings, output / "fused-full-vocab.onnx"),
            output / "int8-full-vocab.onnx",
            recipe,
            CalibrationSet(texts, fp32.parent / "tokenizer.json", max_length),
        )
        variants["int8_full_vocab"] = Variant(full, fp32.parent / "tokenizer.json")
        info["int8_full_vocab_size_mb"] = size_mb(full)
    fused = _fused(edge_onnx, settings, output / "fused.onnx")
    calibration = CalibrationSet(texts, edge_onnx.parent / "tokenizer.json", max_length)
    int8 = quantize(fused, output / "int8.onnx", recipe, calibration)
    variants["int8"] = Variant(int8, calibration.tokenizer)
    info |= {
        "int8_size_mb": size_mb(int8),
        "size_reduction_pct": 100 * (1 - size_mb(int8) / size_mb(fp32)),
        "size_reduction_vs_cloud_pct": 100 * (1 - size_mb(int8) / size_mb(cloud_model)),
        "quantized_ops": len(int8_products(int8)),
    }
    (output / "compress.json").write_text(
        json.dumps(settings.model_dump(mode="json") | info, indent=2), encoding="utf-8"
    )
    return Compressed(output, variants, fused, recipe, info, calibration)


@task(name="compress")
def compress_model(
    config: PipelineConfig,
    data: PreparedData,
    edge: Checkpoint,
    teacher: Checkpoint | None = None,
) -> Compressed:
    """Prefect task: export and quantize the edge model (and export its teacher), a nested MLflow
    run with the sizes."""
    output = config.work_dir.resolve() / "compress" / tracking.pipeline_run_id()
    corpus = pd.concat([data.frame(name)["text"] for name in ("train", "validation", "calibration")]).tolist()
    with tracking.stage("compress", config.compress) as run_id:
        compressed = compress(
            edge.path,
            corpus,
            config.compress,
            output,
            teacher.path if teacher is not None else None,
            calibration_texts=data.frame("calibration")["text"].tolist(),
            max_length=config.model.max_length,
        )
        tracking.log_metrics(run_id, compressed.info)
        tracking.log_text(
            run_id, json.dumps(op_counts(compressed.variants["int8"].model), indent=2), "int8_op_counts.json"
        )
    return compressed
