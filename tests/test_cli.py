"""The command line, run as a user runs it: real processes, real Prefect server, real MLflow."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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
    summary = done.stdout.split("training-pipeline finished\n", 1)[1]
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
