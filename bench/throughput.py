"""Batched throughput of the edge model on 2 threads. Prints JSON.

    .venv/bin/python -m bench.throughput --bundle work/bundles/<run id> [--data messages.csv] [--save]

Every message is classified once per candidate, all on the same texts:

- ``one_at_a_time``: the baseline, one query per call on one thread (what a naive service does);
- ``batched_unsorted``: batches of ``--batch-size`` in arrival order, each padded to its longest
  text, on one session with 2 threads;
- ``edgeroute_2_threads``: ``OnnxClassifier`` as batch routing runs it: texts sorted by length
  into batches (length bucketing), one session with 2 intra-op threads;
- ``edgeroute_2_workers``: the same, the messages split between 2 worker threads over one
  session with 1 intra-op thread each.

With a distilled student at the edge, the teacher's INT8 twin (the 6-layer edge model of a run
without distillation) and its FP32 model (the cloud tier) are timed the same two ways, as
same-run baselines. Messages: ``--data`` (a table with a ``text`` column), else the bundle's
test split, repeated to at least ``--messages``. ``--save`` also writes
``bench/results/throughput.json``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.common import emit, messages, references
from edgeroute.bundle import load_bundle
from edgeroute.model import OnnxClassifier


def unsorted(classifier: OnnxClassifier, texts: list[str], batch_size: int) -> None:
    for start in range(0, len(texts), batch_size):
        classifier.run(classifier.tokenizer.encode_batch(texts[start : start + batch_size]))


def two_workers(classifier: OnnxClassifier, texts: list[str]) -> None:
    half = len(texts) // 2
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(classifier.logits, [texts[:half], texts[half:]]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--data", type=Path, help="messages (CSV, JSONL or Parquet with a text column)")
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--save", action="store_true")
    args = parser.parse_args()
    texts = messages(args.bundle, args.data)
    texts = (texts * (args.messages // len(texts) + 1))[: max(args.messages, len(texts))]
    bundle = load_bundle(args.bundle)
    one = bundle.classifier(threads=1, batch_size=args.batch_size)
    two = bundle.classifier(threads=2, batch_size=args.batch_size)
    candidates = {
        "one_at_a_time": lambda: [one.logits([text]) for text in texts],
        "batched_unsorted": lambda: unsorted(two, texts, args.batch_size),
        "edgeroute_2_threads": lambda: two.logits(texts),
        "edgeroute_2_workers": lambda: two_workers(one, texts),
    }
    with tempfile.TemporaryDirectory() as workdir:
        # The same two ways of batching over the teacher's INT8 twin and its FP32 model.
        single, double = (
            references(args.bundle, Path(workdir), threads=threads, batch_size=args.batch_size)
            for threads in (1, 2)
        )
        for name in single:
            candidates[f"{name}_2_threads"] = lambda model=double[name]: model.logits(texts)
            candidates[f"{name}_2_workers"] = lambda model=single[name]: two_workers(model, texts)
        for model in (one, two):
            model.logits(texts[:256])
        rates: dict[str, list[float]] = {name: [] for name in candidates}
        for _ in range(args.rounds):
            for name, run in candidates.items():
                start = time.perf_counter()
                run()
                rates[name].append(len(texts) / (time.perf_counter() - start))
    best = {name: round(max(values), 1) for name, values in rates.items()}
    fastest = max(("edgeroute_2_threads", "edgeroute_2_workers"), key=best.get)
    ratios = {
        "edgeroute_vs_one_at_a_time": round(best[fastest] / best["one_at_a_time"], 2),
        "edgeroute_vs_unsorted_batches": round(best[fastest] / best["batched_unsorted"], 2),
    }
    for name in ("teacher_int8", "teacher_fp32"):
        if f"{name}_2_threads" in best:
            reference = max(best[f"{name}_2_threads"], best[f"{name}_2_workers"])
            ratios[f"edgeroute_vs_{name}"] = round(best[fastest] / reference, 2)
    emit(
        "throughput",
        {
            "bundle": str(args.bundle),
            "messages": len(texts),
            "batch_size": args.batch_size,
            "rounds": args.rounds,
            "messages_per_s_best_round": best,
            "messages_per_s_median_round": {n: round(sorted(v)[len(v) // 2], 1) for n, v in rates.items()},
            "ratios": ratios,
            "fastest": fastest,
            "goals": {"messages_per_s": 1500, "edgeroute_vs_teacher_int8": 1.8},
        },
        args.save,
    )


if __name__ == "__main__":
    main()
