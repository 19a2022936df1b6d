"""Single-query latency of the edge model on one thread, tokenization included. Prints JSON.

    .venv/bin/python -m bench.latency --bundle work/bundles/<run id> [--data messages.csv] [--save]

``edgeroute``: the bundle's INT8 model as the edge runs it (``OnnxClassifier``: the fast
tokenizer, each query padded only to its own length, ORT on one thread without the slow
fusions). ``router``: the whole edge decision on top (temperature, complexity, unfamiliar text).
The baseline, timed in the same run and interleaved with them, is the naive recipe: the
Hugging Face tokenizer padding every query to 256 tokens, into a default ORT session (one
thread) over the same INT8 model. With a distilled student at the edge, two more same-run
baselines: the bundle's FP32 teacher (the cloud tier) and the teacher with dynamic INT8
(``teacher_int8``: the 6-layer edge model served before distillation and static INT8). Messages: ``--data``
(a table with a ``text`` column), else the bundle's test split. ``--save`` also writes
``bench/results/latency.json`` for the README.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort

from bench.common import emit, interleaved, messages, milliseconds, references
from edgeroute.bundle import EDGE_MODEL, TOKENIZER, load_bundle
from edgeroute.router import Router

NAIVE_LENGTH = 256


def naive(bundle_path: Path):
    """HF tokenizer, padding to 256, a default one-thread ORT session."""
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(bundle_path / TOKENIZER), pad_token="[PAD]")
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(bundle_path / EDGE_MODEL), options, providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}

    def call(text: str) -> np.ndarray:
        feed = tokenizer(
            text, padding="max_length", truncation=True, max_length=NAIVE_LENGTH, return_tensors="np"
        )
        return session.run(None, {k: v.astype(np.int64) for k, v in feed.items() if k in names})[0]

    return call


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--data", type=Path, help="messages (CSV, JSONL or Parquet with a text column)")
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--save", action="store_true")
    args = parser.parse_args()
    texts = messages(args.bundle, args.data)
    bundle = load_bundle(args.bundle)
    edge = bundle.classifier(threads=1)
    router = Router(edge, None, bundle.router_settings())
    candidates = {
        "naive_pad_256": naive(args.bundle),
        "edgeroute": lambda text: edge.logits([text]),
        "router": lambda text: router.route([text]),
    }
    with tempfile.TemporaryDirectory() as workdir:
        for name, model in references(args.bundle, Path(workdir), threads=1).items():
            candidates[name] = lambda text, model=model: model.logits([text])
        timings = interleaved(candidates, texts, args.queries)
    figures = {name: milliseconds(samples) for name, samples in timings.items()}
    lengths = [len(edge.tokenizer.encode(text).ids) for text in texts]
    ratios = {
        "naive_vs_edgeroute_p50": round(
            figures["naive_pad_256"]["p50_ms"] / figures["edgeroute"]["p50_ms"], 1
        ),
        "router_vs_edgeroute_p50": round(figures["router"]["p50_ms"] / figures["edgeroute"]["p50_ms"], 2),
    }
    for name in ("teacher_int8", "teacher_fp32"):
        if name in figures:
            ratios[f"edgeroute_vs_{name}_p50"] = round(
                figures["edgeroute"]["p50_ms"] / figures[name]["p50_ms"], 3
            )
    emit(
        "latency",
        {
            "bundle": str(args.bundle),
            "messages": len(texts),
            "tokens_p50_p95_max": [int(v) for v in np.percentile(lengths, [50, 95, 100])],
            "queries_per_candidate": len(timings["edgeroute"]),
            **figures,
            "ratios": ratios,
            "goals": {
                "p50_ms": 1.0,
                "p95_ms": 2.0,
                "naive_ratio": 30,
                "edgeroute_vs_teacher_int8_p50": 0.55,
                "edgeroute_vs_teacher_fp32_p50": 0.25,
            },
        },
        args.save,
    )


if __name__ == "__main__":
    main()
