"""Compression: export to ONNX, optional vocabulary trimming and graph fusion, dynamic INT8."""

from __future__ import annotations

import json
import re
import shutil
import string
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from prefect import task

from tasks.support import tracking
from tasks.support.config import CompressConfig, PipelineConfig
from tasks.support.dataset import PreparedData
from tasks.support.trainer import Checkpoint

# Operators that hold the weights dynamic quantization turns into INT8.
QUANTIZABLE = ("MatMul", "Gemm", "Attention")
QUANTIZED_OPS = {"MatMulInteger", "QAttention", "DynamicQuantizeLinear", "DynamicQuantizeMatMul", "QGemm"}
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
    optimized.save_model_to_file(str(output))
    return output


def quantize(model: Path, output: Path, recipe: Recipe) -> Path:
    """Dynamic INT8 (weights per channel or per tensor, activations at run time)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    ops = [*QUANTIZABLE, "Gather"] if recipe.quantize_embeddings else list(QUANTIZABLE)
    quantize_dynamic(
        model,
        output,
        op_types_to_quantize=ops,
        per_channel=recipe.per_channel,
        weight_type=QuantType.QInt8,
        # The quantizer rewrites Gemm as MatMul + Add first, renaming it "<name>_MatMul".
        nodes_to_exclude=[n for name in recipe.exclude for n in (name, f"{name}_MatMul")],
        # Fused graphs have tensors whose type the quantizer cannot infer (DESIGN §6).
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )
    return output


def op_counts(model: Path) -> dict[str, int]:
    import onnx

    counts: dict[str, int] = {}
    for node in onnx.load(str(model), load_external_data=False).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def quantized_op_count(model: Path) -> int:
    return sum(count for op, count in op_counts(model).items() if op in QUANTIZED_OPS)


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


def fallback_recipes(primary: Recipe, model: Path, layer_order: Iterable[int], limit: int) -> list[Recipe]:
    """The bounded list tried after ``primary`` fails: the other weight granularity, then keeping
    the classifier head in FP32, then also the most sensitive encoder layers, one more each time."""
    head, layers = weight_nodes(model)
    recipes = [
        Recipe(f"per_channel={not primary.per_channel}", not primary.per_channel, primary.quantize_embeddings)
    ]
    excluded = tuple(head)
    recipes.append(Recipe("head in FP32", primary.per_channel, primary.quantize_embeddings, excluded))
    kept: list[int] = []
    for layer in layer_order:
        kept.append(layer)
        excluded += tuple(layers[layer])
        name = f"head and layer{'s' if len(kept) > 1 else ''} {', '.join(map(str, kept))} in FP32"
        recipes.append(Recipe(name, primary.per_channel, primary.quantize_embeddings, excluded))
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

    ``fused`` is the FP32 graph the INT8 models are quantized from, for the fallback.
    """

    directory: Path
    variants: dict[str, Variant]
    fused: Path
    recipe: Recipe
    info: dict[str, float]

    @property
    def cloud_name(self) -> str:
        """The cloud tier's variant: the teacher, which is the edge model's own FP32 without distillation."""
        return TEACHER_FP32 if TEACHER_FP32 in self.variants else "fp32"

    @property
    def cloud(self) -> Variant:
        return self.variants[self.cloud_name]


def _fused(onnx_model: Path, settings: CompressConfig, output: Path) -> Path:
    return fuse_graph(onnx_model, output) if settings.optimize else onnx_model


def compress(
    checkpoint: Path,
    corpus: list[str],
    settings: CompressConfig,
    output: Path,
    teacher: Path | None = None,
) -> Compressed:
    """Export FP32; optionally trim the vocabulary; fuse; quantize with the primary recipe.

    ``teacher`` (the checkpoint ``checkpoint`` was distilled from) is exported too, as the cloud
    tier, and quantized at full vocabulary as the benchmark's reference.
    """
    fp32 = export_onnx(checkpoint, output / "fp32")
    recipe = Recipe("primary", settings.per_channel, settings.quantize_embeddings)
    variants = {"fp32": Variant(fp32, fp32.parent / "tokenizer.json")}
    info: dict[str, float] = {"fp32_size_mb": size_mb(fp32)}
    if teacher is not None:
        teacher_fp32 = export_onnx(teacher, output / "teacher")
        teacher_int8 = quantize(
            _fused(teacher_fp32, settings, output / "teacher-fused.onnx"),
            output / "teacher-int8.onnx",
            recipe,
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
            _fused(fp32, settings, output / "fused-full-vocab.onnx"), output / "int8-full-vocab.onnx", recipe
        )
        variants["int8_full_vocab"] = Variant(full, fp32.parent / "tokenizer.json")
        info["int8_full_vocab_size_mb"] = size_mb(full)
    fused = _fused(edge_onnx, settings, output / "fused.onnx")
    int8 = quantize(fused, output / "int8.onnx", recipe)
    variants["int8"] = Variant(int8, edge_onnx.parent / "tokenizer.json")
    info |= {
        "int8_size_mb": size_mb(int8),
        "size_reduction_pct": 100 * (1 - size_mb(int8) / size_mb(fp32)),
        "size_reduction_vs_cloud_pct": 100 * (1 - size_mb(int8) / size_mb(cloud_model)),
        "quantized_ops": quantized_op_count(int8),
    }
    (output / "compress.json").write_text(
        json.dumps(settings.model_dump(mode="json") | info, indent=2), encoding="utf-8"
    )
    return Compressed(output, variants, fused, recipe, info)


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
            edge.path, corpus, config.compress, output, teacher.path if teacher is not None else None
        )
        tracking.log_metrics(run_id, compressed.info)
        tracking.log_text(
            run_id, json.dumps(op_counts(compressed.variants["int8"].model), indent=2), "int8_op_counts.json"
        )
    return compressed
