"""The flywheel, measured: K cycles of serving, paying the cloud, and retraining from production.

    .venv/bin/python -m bench.flywheel --preset banking77 --cycles 3 --save
    .venv/bin/python -m bench.flywheel --preset demo --cycles 3 --save

The labelled set (the preset's ``data.path``, or the generator's ``data.n_samples`` messages) is
shuffled once (``--seed``) and cut in three:
- the stream: ``cycles + 1`` chunks of ``--chunk`` messages, which only production sees;
- the seed set: ``--seed-rows`` of the rest, an equal share per label, which cycle 0 trains on;
- the cloud's set: all the rest with the seed set, on which a stronger model is trained and
  served as the cloud tier (`edgeroute serve --role cloud`).

Cycle k sends chunk k through the edge service (real HTTP, ``audit.keep_text: masked``, the
service following ``models:/<name>@champion``), gives feedback on ``--feedback-share`` of the
requests, then retrains from the trail (`data.production`); promotion decides, and the
service follows the alias. A retraining that fails a gate leaves the champion serving, as in
production, and the cycle says so. Per cycle: edge share, routed accuracy, edge-only accuracy,
cloud-only accuracy (the cloud service on the same chunk), cloud calls, cost per query, and
the training rows by source. ``--set`` overrides go to every training run; ``--save`` writes
``bench/results/flywheel-<preset>.json``, ``.png`` and ``.md`` (the README's table) after every
cycle, so a run stopped part-way keeps what it measured.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd

from bench.common import RESULTS, emit, start_service, stop_service
from tasks.gate import GateFailed
from tasks.support.config import load_config

BATCH = 32  # texts per request


def split_rows(frame: pd.DataFrame, seed_rows: int, chunk: int, chunks: int, seed: int) -> dict:
    """The stream's chunks, the seed set (an equal share per label) and the cloud's set."""
    frame = frame.sample(frac=1.0, random_state=seed).reset_index(drop=True)
    stream, rest = frame.iloc[: chunk * chunks], frame.iloc[chunk * chunks :]
    if len(rest) < seed_rows:
        raise SystemExit(
            f"{len(frame)} labelled rows: too few for {chunks} chunks of {chunk} and {seed_rows} seed rows"
        )
    per_label = rest.groupby("label", sort=True).cumcount()  # round robin over the labels
    seed_set = rest.assign(turn=per_label).sort_values(["turn", "label"], kind="stable").head(seed_rows)
    return {
        "stream": [stream.iloc[i * chunk : (i + 1) * chunk] for i in range(chunks)],
        "seed": seed_set[["text", "label"]],
        "cloud": rest[["text", "label"]],
    }


def labelled(preset: str, overrides: list[str]) -> pd.DataFrame:
    """The preset's labelled rows as text and label."""
    from tasks.data import deduplicate, load_source, validate

    config = load_config(preset, overrides)
    raw, source = load_source(config.data, config.seed)
    return deduplicate(validate(raw, config.data, source)[0])[0][["text", "label"]]


def train(preset: str, overrides: list[str]) -> dict:
    from flows.training import training_pipeline

    return training_pipeline(preset=preset, overrides=overrides)


def classify(url: str, texts: list[str]) -> list[dict]:
    results = []
    for start in range(0, len(texts), BATCH):
        response = httpx.post(f"{url}/v1/classify", json={"texts": texts[start : start + BATCH]}, timeout=120)
        response.raise_for_status()
        results += response.json()["results"]
    return results


def edge_labels(trail: Path, request_ids: list[str]) -> list[str]:
    """What the edge model answered for each request, from the audit trail."""
    with sqlite3.connect(f"{trail.resolve().as_uri()}?mode=ro", uri=True) as db:
        rows = dict(db.execute("SELECT request_id, edge_label FROM decisions"))
    return [rows[r] for r in request_ids]


def wait_for_version(url: str, version: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while httpx.get(f"{url}/readyz", timeout=5).json()["model_version"] != version:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not follow the champion to version {version}")
        time.sleep(0.5)


def cycle_figures(chunk: pd.DataFrame, results: list[dict], edge: list[str], cloud: list[dict]) -> dict:
    truth = chunk["label"].to_numpy()
    routes = np.array([r["route"] for r in results])
    return {
        "queries": len(results),
        "edge_share": float(np.mean(routes == "edge")),
        "routed_accuracy": float(np.mean(np.array([r["label"] for r in results]) == truth)),
        "edge_only_accuracy": float(np.mean(np.array(edge) == truth)),
        "cloud_only_accuracy": float(np.mean(np.array([r["label"] for r in cloud]) == truth)),
        "cloud_calls": int(np.sum(routes == "cloud")),
        "cost_per_query": float(np.mean([r["cost"] for r in results])),
    }


def training_rows(data_dir: str) -> dict:
    """The rows a model learnt from (train, validation and calibration), by source."""
    from tasks.support.dataset import PreparedData

    data = PreparedData.load(Path(data_dir))
    learnt = {name: data.production.get(name, 0) for name in ("feedback", "cloud")}
    base = sum(data.split_counts[name] for name in ("train", "validation", "calibration")) - sum(
        learnt.values()
    )
    return {"base": base} | learnt


def table(cycles: list[dict]) -> str:
    rows = [
        "| cycle | model | edge share | routed accuracy | edge-only accuracy | cloud-only accuracy | "
        "cloud calls | cost per query | training rows: base / feedback / cloud |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c in cycles:
        t = c["training_rows"]
        rows.append(
            f"| {c['cycle']} | {c['model_version']} | {c['edge_share']:.1%} | {c['routed_accuracy']:.4f} | "
            f"{c['edge_only_accuracy']:.4f} | {c['cloud_only_accuracy']:.4f} | {c['cloud_calls']} | "
            f"${c['cost_per_query']:.5f} | "
            f"{t['base']} / {t['feedback']} / {t['cloud']} |"
        )
    return "\n".join(rows)


def plot(cycles: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [c["cycle"] for c in cycles]
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(x, [c["edge_share"] for c in cycles], "o-", label="edge share")
    left.plot(x, [c["routed_accuracy"] for c in cycles], "s-", label="routed accuracy")
    left.plot(x, [c["cloud_only_accuracy"] for c in cycles], "--", label="cloud-only accuracy")
    left.set(xlabel="cycle", ylim=(0, 1.02), xticks=x)
    left.legend(loc="lower right")
    right.plot(x, [c["cost_per_query"] for c in cycles], "o-", color="tab:red")
    right.set(xlabel="cycle", ylabel="dollars per query", xticks=x, ylim=(0, None))
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def report(
    args: argparse.Namespace, workdir: Path, cloud_rows: int, cycles: list[dict], minutes: float
) -> dict:
    first, last = cycles[0], cycles[-1]
    return {
        "preset": args.preset,
        "settings": vars(args) | {"workdir": str(workdir)},
        "stream_rows": args.chunk * (args.cycles + 1),
        "cloud_training_rows": cloud_rows,
        "cycles_measured": len(cycles),
        "cycles": cycles,
        "ratios": {
            "edge_share_points_gained": round(100 * (last["edge_share"] - first["edge_share"]), 1),
            "cost_per_query_change": round(last["cost_per_query"] / first["cost_per_query"] - 1, 4),
            "min_routed_over_cloud_only": round(
                min(c["routed_accuracy"] / c["cloud_only_accuracy"] for c in cycles), 4
            ),
        },
        "minutes": round(minutes, 1),
    }


def publish(name: str, result: dict, save: bool) -> None:
    """Print the report; with ``save``, also write its JSON, plot and table."""
    emit(name, result, save)
    if save:
        last = result["cycles"][-1]["cycle"]
        plot(
            result["cycles"],
            RESULTS / f"{name}.png",
            f"The flywheel on {result['preset']}: cycles 0 to {last}",
        )
        (RESULTS / f"{name}.md").write_text(table(result["cycles"]) + "\n", encoding="utf-8")
    print(table(result["cycles"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--cycles", type=int, default=3, help="retraining cycles after cycle 0")
    parser.add_argument("--seed-rows", type=int, default=500)
    parser.add_argument("--chunk", type=int, default=1000, help="stream messages per cycle")
    parser.add_argument("--feedback-share", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--workdir", type=Path, help="default: work/flywheel/<preset>; its registry and trail are made anew"
    )
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--save", action="store_true")
    args = parser.parse_args()

    workdir = (args.workdir or Path("work/flywheel") / args.preset).resolve()
    # A fresh registry and trail; the training stages' caches under work/ are kept (keyed by content).
    for old in ("mlflow.db", "artifacts", "audit.db", "audit.db-wal", "audit.db-shm"):
        path = workdir / old
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    workdir.mkdir(parents=True, exist_ok=True)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{workdir / 'mlflow.db'}"
    parts = split_rows(
        labelled(args.preset, args.overrides), args.seed_rows, args.chunk, args.cycles + 1, args.seed
    )
    for part in ("seed", "cloud"):
        parts[part].to_csv(workdir / f"{part}.csv", index=False)
    common = [
        *args.overrides,
        f"work_dir={workdir / 'work'}",
        "data.label_column=label",
        "data.text_column=text",
    ]
    started = time.monotonic()
    # The cloud is the reference the edge learns from, served as its FP32 model: its INT8 twin is
    # never served and its behaviour is not what is measured, so neither gate binds it here.
    reference = [
        "distill.enabled=false", "gate.min_accuracy_retention=0.01", "gate.min_macro_f1_retention=null",
        "behaviour.enabled=false", "tracking.registered_model=flywheel-cloud",
    ]  # fmt: skip
    cloud = train(args.preset, [*common, f"data.path={workdir / 'cloud.csv'}", *reference])
    cloud_process, cloud_url = start_service(Path(cloud["bundle"]), "cloud", workdir)
    edge_settings = [*common, f"data.path={workdir / 'seed.csv'}", f"cloud.url={cloud_url}",
                     "tracking.registered_model=flywheel-edge"]  # fmt: skip
    trail = workdir / "audit.db"
    name = f"flywheel-{args.preset}"
    cycles: list[dict] = []
    try:
        run = train(args.preset, edge_settings)
        edge_process, edge_url = start_service(
            "models:/flywheel-edge@champion", "edge", workdir, "--cloud-url", cloud_url, "--refresh-s", "1",
            "--set", "audit.keep_text=masked", audit=trail,
        )  # fmt: skip
        try:
            rng = np.random.default_rng(args.seed)
            serving = training_rows(run["data_dir"])  # what the champion answering was trained on
            for k, chunk in enumerate(parts["stream"]):
                texts = chunk["text"].tolist()
                results = classify(edge_url, texts)
                for result, label in zip(results, chunk["label"], strict=True):
                    if rng.random() < args.feedback_share:
                        body = {"request_id": result["request_id"], "label": label}
                        httpx.post(f"{edge_url}/v1/feedback", json=body, timeout=30).raise_for_status()
                edge = edge_labels(trail, [r["request_id"] for r in results])
                figures = cycle_figures(chunk, results, edge, classify(cloud_url, texts))
                cycles.append({"cycle": k, "model_version": results[0]["model_version"], **figures,
                               "training_rows": serving})  # fmt: skip
                minutes = (time.monotonic() - started) / 60
                publish(name, report(args, workdir, len(parts["cloud"]), cycles, minutes), args.save)
                if k == args.cycles:
                    break
                try:
                    run = train(args.preset, [*edge_settings, f"data.production.trail={trail}"])
                except GateFailed as failed:  # the champion serves on, as in production
                    cycles[-1]["retrained"] = {"failed": str(failed)}
                    continue
                version = run["registered_model"].rsplit("/", 1)[1]
                cycles[-1]["retrained"] = {"version": version, "promoted": run["promoted"] == "yes"}
                if run["promoted"] == "yes":
                    wait_for_version(edge_url, f"flywheel-edge/{version}")
                    serving = training_rows(run["data_dir"])
        finally:
            stop_service(edge_process)
    finally:
        stop_service(cloud_process)


if __name__ == "__main__":
    main()
