"""The command line, run as a user runs it: real processes, real Prefect server, real MLflow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

BIN = Path(sys.executable).parent


def _run(args: list[str], tmp_path: Path, api_url: str | None = None) -> subprocess.CompletedProcess:
    env = os.environ | {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    if api_url:
        env["PREFECT_API_URL"] = api_url
    return subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


def test_config_prints_the_resolved_preset(tmp_path):
    done = _run([str(BIN / "edgeroute"), "config", "--preset", "tiny", "--set", "seed=3"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert yaml.safe_load(done.stdout)["seed"] == 3


def test_config_error_exits_2_naming_the_field(tmp_path):
    done = _run([str(BIN / "edgeroute"), "config", "--set", "data.colour=blue"], tmp_path)
    assert done.returncode == 2
    assert "data.colour: unknown field" in done.stderr


def test_train_with_missing_data_exits_1_with_the_reason(tmp_path, prefect_harness):
    done = _run(
        [str(BIN / "edgeroute"), "train", "--preset", "tiny", "--data", "missing.csv"],
        tmp_path,
        prefect_harness,
    )
    assert done.returncode == 1
    assert "error: data file not found: missing.csv" in done.stderr
    assert not (tmp_path / "work").exists()


def test_python_m_flows_training_runs_the_flow(tmp_path, prefect_harness):
    done = _run([sys.executable, "-m", "flows.training", "--preset", "tiny"], tmp_path, prefect_harness)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "# Training run `edgeroute-tiny-" in done.stdout and "## Registry" in done.stdout
    summary = done.stdout.split("\nOutputs\n", 1)[1]
    lines = dict(line.split(None, 1) for line in summary.splitlines() if line.startswith("  "))
    data_dir = Path(lines["data_dir"])
    assert data_dir.parent == tmp_path / "work" / "data"
    assert (data_dir / "train.parquet").is_file()
    assert len(lines["mlflow_run_id"]) == 32
    assert Path(lines["classifier_checkpoint"], "config.json").is_file()


def test_train_with_a_gate_that_cannot_pass_exits_1_with_the_report(tmp_path, prefect_harness):
    done = _run(
        [str(BIN / "edgeroute"), "train", "--preset", "tiny", "--set", "gate.min_accuracy_retention=1.5",
         "--set", "gate.max_attempts=2"],
        tmp_path,
        prefect_harness,
    )  # fmt: skip
    assert done.returncode == 1
    assert "error: # Quantization gate" in done.stderr
    assert "| 2 | per_channel=False |" in done.stderr
    assert not (tmp_path / "work" / "bundles").exists()


def test_classify_routes_arguments_and_stdin(tmp_path, tiny_bundle):
    texts = ["thanks, the refund arrived quickly", "my order never came and nobody answers"]
    done = _run(
        [str(BIN / "edgeroute"), "classify", "--bundle", str(tiny_bundle), "--json", *texts], tmp_path
    )
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["text"] for r in rows] == texts
    for row in rows:
        assert row["route"] in {"edge", "cloud"} and row["label"] in {"negative", "neutral", "positive"}
        assert row["reason"] and row["cost"] > 0 and 0 < row["confidence"] <= 1

    piped = subprocess.run(
        [str(BIN / "edgeroute"), "classify", "-b", str(tiny_bundle)],
        input="\n".join(texts) + "\n",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert piped.returncode == 0, piped.stderr
    lines = [line.split("\t") for line in piped.stdout.splitlines()]
    assert [(cols[0], cols[2], cols[3]) for cols in lines] == [
        (r["label"], r["route"], r["reason"]) for r in rows
    ]
    assert [cols[-1] for cols in lines] == texts


def test_classify_without_a_bundle_or_with_a_broken_one_exits_2(tmp_path, tiny_bundle):
    done = _run([str(BIN / "edgeroute"), "classify", "hello"], tmp_path)
    assert done.returncode == 2 and "--bundle DIR or --model" in done.stderr
    done = _run([str(BIN / "edgeroute"), "classify", "--bundle", str(tmp_path), "hello"], tmp_path)
    assert done.returncode == 2 and "not a bundle (no manifest.json)" in done.stderr


def test_simulate_projects_the_monthly_split_and_cost(tmp_path, tiny_bundle, tiny_prepared):
    test = tiny_prepared[1].frame("test").rename(columns={"text": "message", "label": "truth"})
    test.to_csv(tmp_path / "tickets.csv", index=False)
    args = [str(BIN / "edgeroute"), "simulate", "--data", "tickets.csv", "--bundle", str(tiny_bundle)]
    done = _run(
        [*args, "--text-column", "message", "--label-column", "truth", "--per-month", "1000000", "--json"],
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["queries"] == len(test) and sum(report["reasons"].values()) == len(test)
    assert report["monthly_cost"] == pytest.approx(report["cost_per_query"] * 1_000_000)
    assert report["monthly_cloud_only_cost"] == pytest.approx(0.0136 * 1_000_000)
    assert 0 <= report["accuracy"] <= 1

    text = _run([*args, "--text-column", "message"], tmp_path)
    assert text.returncode == 0, text.stderr
    assert f"routed {len(test):,} messages" in text.stdout and "per month (1,000,000 messages)" in text.stdout

    wrong = _run(args, tmp_path)
    assert wrong.returncode == 1
    assert "tickets.csv: column 'text' not found; columns are: 'message', 'truth'" in wrong.stderr


def test_classify_with_an_unknown_registered_model_exits_2(tmp_path):
    done = _run([str(BIN / "edgeroute"), "classify", "--model", "models:/nope@champion", "hello"], tmp_path)
    assert done.returncode == 2
    assert "error: --model models:/nope@champion:" in done.stderr and "Traceback" not in done.stderr
