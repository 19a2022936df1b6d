"""Graph optimization before quantization: which ORT fusions pay on this CPU. Prints JSON.

    .venv/bin/python -m bench.graph --bundle work/bundles/<run id> [--save]

From the bundle's FP32 model (the plain export), three INT8 models are built with the
pipeline's own quantizer (``tasks.compress.quantize``, the primary recipe) and timed in the
same run, interleaved, on one thread:

- ``export_only``: quantized as exported; ORT applies its default runtime fusions;
- ``all_fusions``: ORT's transformer optimizer with every BERT fusion (attention, skip layer
  norm, bias GELU) before quantization, as optimum's ``ORTOptimizer`` does at level 2;
- ``edgeroute``: ``tasks.compress.fuse_graph`` (layer norm and GELU only) and the runtime's
  session (``edgeroute.model.SLOW_FUSIONS`` off), as the bundle's edge model runs.

For each: single-query latency, batches of 32 on one thread, the ops in the graph ORT runs,
and agreement with the FP32 model's predictions. ``--save`` writes ``bench/results/graph.json``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from bench.common import emit, interleaved, messages, milliseconds
from edgeroute.bundle import CLOUD_MODEL, load_bundle
from edgeroute.model import SLOW_FUSIONS, OnnxClassifier, load_tokenizer
from tasks.compress import Recipe, fuse_graph, op_counts, quantize


def all_fusions(model: Path, output: Path) -> Path:
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    options = FusionOptions("bert")
    options.enable_embed_layer_norm = False  # needs calibration data to quantize (DESIGN §6)
    optimize_model(str(model), model_type="bert", num_heads=0, hidden_size=0, optimization_options=options
                   ).save_model_to_file(str(output))  # fmt: skip
    return output


class Candidate(OnnxClassifier):
    """An ``OnnxClassifier`` whose session keeps ORT's default runtime fusions, or not."""

    def __init__(self, model: Path, tokenizer, labels, default_session: bool) -> None:
        super().__init__(model, tokenizer, labels, threads=1)
        if default_session:
            options = ort.SessionOptions()
            options.intra_op_num_threads = 1
            self.session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])


def runtime_ops(model: Path, disabled: list[str], scratch: Path) -> dict[str, int]:
    """The ops of the graph ORT runs, after its own optimizations (saved at the extended level)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(scratch / f"{model.stem}.runtime.onnx")
    ort.InferenceSession(
        str(model), options, providers=["CPUExecutionProvider"], disabled_optimizers=disabled
    )
    counts = op_counts(Path(options.optimized_model_filepath))
    return {op: n for op, n in sorted(counts.items(), key=lambda kv: -kv[1]) if n}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--queries", type=int, default=1500)
    parser.add_argument("--save", action="store_true")
    args = parser.parse_args()
    bundle = load_bundle(args.bundle)
    texts = messages(args.bundle)
    fp32 = args.bundle / CLOUD_MODEL
    tokenizer = load_tokenizer(fp32.parent / "tokenizer.json", bundle.manifest["max_length"])
    # Dynamic INT8 needs no calibration set; the fusions it measures are the same for static.
    recipe = Recipe("dynamic", per_channel=True, quantize_embeddings=True, static=False)
    with tempfile.TemporaryDirectory() as scratch_dir:
        scratch = Path(scratch_dir)
        models = {
            "export_only": (quantize(fp32, scratch / "export_only.onnx", recipe), True),
            "all_fusions": (
                quantize(all_fusions(fp32, scratch / "all.onnx"), scratch / "all_fusions.onnx", recipe),
                True,
            ),
            "edgeroute": (
                quantize(fuse_graph(fp32, scratch / "ours.onnx"), scratch / "edgeroute.onnx", recipe),
                False,
            ),
        }
        candidates = {
            name: Candidate(path, tokenizer, bundle.labels, default)
            for name, (path, default) in models.items()
        }
        reference = OnnxClassifier(fp32, tokenizer, bundle.labels).predict(texts)
        report: dict = {"bundle": str(args.bundle), "messages": len(texts)}
        timings = interleaved(
            {name: (lambda t, c=c: c.logits([t])) for name, c in candidates.items()}, texts, args.queries
        )
        batches = sorted(texts, key=len)
        for name, candidate in candidates.items():
            candidate.batch_size = 32
            candidate.logits(batches[:64])
            start = time.perf_counter()
            candidate.logits(batches)
            path, default = models[name]
            report[name] = {
                "single_query": milliseconds(timings[name]),
                "batched_1_thread_messages_per_s": round(len(batches) / (time.perf_counter() - start), 1),
                "agreement_with_fp32": round(
                    float(np.mean(np.array(candidate.predict(texts)) == np.array(reference))), 4
                ),
                "runtime_ops": runtime_ops(path, [] if default else list(SLOW_FUSIONS), scratch),
            }
    report["ratios"] = {
        f"{name}_vs_edgeroute_p50": round(
            report[name]["single_query"]["p50_ms"] / report["edgeroute"]["single_query"]["p50_ms"], 2
        )
        for name in ("export_only", "all_fusions")
    } | {
        f"edgeroute_vs_{name}_batched": round(
            report["edgeroute"]["batched_1_thread_messages_per_s"]
            / report[name]["batched_1_thread_messages_per_s"],
            2,
        )
        for name in ("export_only", "all_fusions")
    }
    emit("graph", report, args.save)


if __name__ == "__main__":
    main()
