"""Benchmark: every compressed variant on the test split, through the runtime model that will be served."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import psutil
from prefect import task
from prefect.artifacts import create_table_artifact

from edgeroute.config import BatchingConfig
from edgeroute.model import OnnxClassifier, load_tokenizer, softmax
from tasks.compress import Compressed, Variant, size_mb
from tasks.support import tracking
from tasks.support.config import EvaluateConfig, PipelineConfig
from tasks.support.dataset import PreparedData

# The texts of one micro-batch in the service, by default.
BATCH_TEXTS = BatchingConfig().max_texts
HEADLINE = ("accuracy", "macro_f1", "p50_ms", "p95_ms", "p99_ms", "throughput_per_s", "size_mb")
# A class's recall counts towards min_class_recall from this many test messages on: below it, one
# message is a tenth of the figure or more.
MIN_CLASS_SUPPORT = 10


def quality(classifier: OnnxClassifier, frame: pd.DataFrame) -> dict[str, float]:
    """Accuracy, macro-F1, the F1 of each class, and the lowest recall of a class with
    ``MIN_CLASS_SUPPORT`` test messages or more (1.0 where none has)."""
    from sklearn.metrics import accuracy_score, f1_score, recall_score

    predicted = classifier.predict(frame["text"].tolist())
    labels = classifier.labels
    per_class = f1_score(frame["label"], predicted, labels=labels, average=None, zero_division=0)
    recall = recall_score(frame["label"], predicted, labels=labels, average=None, zero_division=0)
    support = frame["label"].value_counts()
    counted = [
        r for label, r in zip(labels, recall, strict=True) if support.get(label, 0) >= MIN_CLASS_SUPPORT
    ]
    return {
        "accuracy": float(accuracy_score(frame["label"], predicted)),
        "macro_f1": float(np.mean(per_class)),
        "min_class_recall": float(min(counted, default=1.0)),
    } | {f"f1.{label}": float(score) for label, score in zip(labels, per_class, strict=True)}


def latency(classifier: OnnxClassifier, texts: list[str], queries: int, warmup: int) -> dict[str, float]:
    """Single-query latency, tokenization included, after warm-up."""
    for text in texts[:warmup]:
        classifier.logits([text])
    timings = []
    for text in (texts * (queries // max(len(texts), 1) + 1))[:queries]:
        start = time.perf_counter()
        classifier.logits([text])
        timings.append((time.perf_counter() - start) * 1000)
    p50, p95, p99 = np.percentile(timings, [50, 95, 99])
    return {"p50_ms": float(p50), "p95_ms": float(p95), "p99_ms": float(p99)}


def throughput(classifier: OnnxClassifier, texts: list[str]) -> float:
    """Messages per second through batched ``predict_proba``."""
    classifier.logits(texts[: classifier.batch_size])
    start = time.perf_counter()
    classifier.logits(texts)
    return len(texts) / (time.perf_counter() - start)


def batch_dependence(classifier: OnnxClassifier, texts: list[str], seed: int = 0) -> dict[str, float]:
    """How much a text's answer moves when it shares a model call: each text alone against the
    same text in the service's batches (shuffled, ``max_texts`` a call, bucketed by length as the
    runtime buckets them). Probabilities at temperature 1."""
    order = np.random.default_rng(seed).permutation(len(texts))
    batched = np.empty((len(texts), len(classifier.labels)), dtype=np.float32)
    for start in range(0, len(texts), BATCH_TEXTS):
        chunk = order[start : start + BATCH_TEXTS]
        batched[chunk] = classifier.logits([texts[i] for i in chunk])
    alone = np.concatenate([classifier.logits([text]) for text in texts])
    alone, batched = softmax(alone), softmax(batched)
    return {
        "batch_label_agreement": float((alone.argmax(axis=1) == batched.argmax(axis=1)).mean()),
        "batch_max_probability_change": float(np.abs(alone - batched).max()),
    }


def benchmark(
    variant: Variant, labels: list[str], max_length: int, test: pd.DataFrame, settings: EvaluateConfig
) -> dict[str, float]:
    """Quality, one-thread latency, batch dependence, batched throughput, file size and the memory
    the model takes."""
    process = psutil.Process()
    rss_before = process.memory_info().rss
    tokenizer = load_tokenizer(variant.tokenizer, max_length)
    single = OnnxClassifier(variant.model, tokenizer, labels, threads=1)
    metrics = quality(single, test)
    metrics |= latency(single, test["text"].tolist(), settings.latency_queries, settings.warmup)
    metrics |= batch_dependence(single, test["text"].tolist())
    metrics["rss_mb"] = (process.memory_info().rss - rss_before) / 1e6
    batched = OnnxClassifier(
        variant.model, tokenizer, labels, threads=settings.throughput_threads, batch_size=settings.batch_size
    )
    metrics["throughput_per_s"] = throughput(batched, test["text"].tolist())
    metrics["size_mb"] = size_mb(variant.model)
    return metrics


def benchmark_all(
    compressed: Compressed, labels: list[str], max_length: int, test: pd.DataFrame, settings: EvaluateConfig
) -> dict[str, dict[str, float]]:
    return {
        name: benchmark(variant, labels, max_length, test, settings)
        for name, variant in compressed.variants.items()
    }


@task(name="benchmark")
def benchmark_models(
    config: PipelineConfig, data: PreparedData, compressed: Compressed
) -> dict[str, dict[str, float]]:
    """Prefect task: benchmark every variant, to MLflow and as a Prefect table artifact."""
    results = benchmark_all(
        compressed, data.labels, config.model.max_length, data.frame("test"), config.evaluate
    )
    with tracking.stage("benchmark", config.evaluate) as run_id:
        for name, metrics in results.items():
            tracking.log_metrics(run_id, {f"{name}.{key}": value for key, value in metrics.items()})
    create_table_artifact(
        key="benchmark",
        table=[{"model": name} | {k: round(m[k], 4) for k in HEADLINE} for name, m in results.items()],
        description="Teacher FP32 (cloud tier) and its INT8 twin, the edge model in FP32 and INT8 (the "
        "student when distilled), on the test split (latency: one thread, one query, tokenization included).",
    )
    return results
