"""Size and accuracy of the INT8 edge model against its FP32 source, per dataset. Prints JSON.

    .venv/bin/python -m bench.compression --bundle demo=work/bundles/<run id> \\
        --bundle banking77=work/bundles/<run id> [--save]

Each bundle holds both tiers the pipeline built from one fine-tuned classifier: its FP32
export (``cloud/model.onnx``, the teacher, the baseline) and the INT8 edge model (the distilled
student, or the teacher itself without distillation; trimmed vocabulary, graph fusions, dynamic
quantization). Both are scored here, in the same run, on the bundle's own test
split (found through its lineage; the split the gate used), and their files are weighed.
Bundles come from ``edgeroute train --preset demo`` and ``--preset banking77``. ``--save``
writes ``bench/results/compression.json``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from bench.common import emit
from edgeroute.bundle import CLOUD_MODEL, EDGE_MODEL, load_bundle


def measure(path: Path) -> dict:
    bundle = load_bundle(path)
    test = pd.read_parquet(Path(bundle.manifest["lineage"]["data_dir"]) / "test.parquet")
    truth = test["label"].to_numpy()
    accuracy = {
        name: float(
            np.mean(np.array(bundle.classifier(model, threads=2).predict(test["text"].tolist())) == truth)
        )
        for name, model in (("fp32", CLOUD_MODEL), ("int8", EDGE_MODEL))
    }
    size = {
        name: (path / model).stat().st_size / 1e6
        for name, model in (("fp32", CLOUD_MODEL), ("int8", EDGE_MODEL))
    }
    return {
        "bundle": str(path),
        "test_messages": len(test),
        "classes": len(bundle.labels),
        "fp32_accuracy": round(accuracy["fp32"], 4),
        "int8_accuracy": round(accuracy["int8"], 4),
        "accuracy_retention_pct": round(100 * accuracy["int8"] / accuracy["fp32"], 2),
        "fp32_size_mb": round(size["fp32"], 2),
        "int8_size_mb": round(size["int8"], 2),
        "size_reduction_pct": round(100 * (1 - size["int8"] / size["fp32"]), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", action="append", required=True, help="name=path, once per dataset")
    parser.add_argument("--save", action="store_true")
    args = parser.parse_args()
    report = {name: measure(Path(path)) for name, path in (item.split("=", 1) for item in args.bundle)}
    report["goals"] = {"size_reduction_pct": 92, "accuracy_retention_pct": 99}
    emit("compression", report, args.save)


if __name__ == "__main__":
    main()
