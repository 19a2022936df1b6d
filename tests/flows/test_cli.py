"""The training side's commands of `edgeroute`, run as a user runs them: real processes, real
Prefect server, real MLflow."""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

from tests.services import BIN, run_cli


def test_config_prints_the_resolved_preset(tmp_path):
    done = run_cli([str(BIN / "edgeroute"), "config", "--preset", "tiny", "--set", "seed=3"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert yaml.safe_load(done.stdout)["seed"] == 3


def test_config_error_exits_2_naming_the_field(tmp_path):
    done = run_cli([str(BIN / "edgeroute"), "config", "--set", "data.colour=blue"], tmp_path)
    assert done.returncode == 2
    assert "data.colour: unknown field" in done.stderr


def test_train_with_missing_data_exits_1_with_the_reason(tmp_path, prefect_harness):
    done = run_cli(
        [str(BIN / "edgeroute"), "train", "--preset", "tiny", "--data", "missing.csv"],
        tmp_path,
        prefect_harness,
    )
    assert done.returncode == 1
    assert "error: data file not found: missing.csv" in done.stderr
    assert not (tmp_path / "work").exists()


def test_python_m_flows_train_runs_the_flow(tmp_path, prefect_harness):
    done = run_cli([sys.executable, "-m", "flows", "train", "--preset", "tiny"], tmp_path, prefect_harness)
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
    done = run_cli(
        [str(BIN / "edgeroute"), "train", "--preset", "tiny", "--set", "gate.min_accuracy_retention=1.5",
         "--set", "gate.max_attempts=2"],
        tmp_path,
        prefect_harness,
    )  # fmt: skip
    assert done.returncode == 1
    assert "error: # Quantization gate" in done.stderr
    assert "| 2 | per_channel=False |" in done.stderr
    assert not (tmp_path / "work" / "bundles").exists()


def test_classify_with_an_unknown_registered_model_exits_2(tmp_path):
    done = run_cli(
        [str(BIN / "edgeroute"), "classify", "--model", "models:/nope@champion", "hello"], tmp_path
    )
    assert done.returncode == 2
    assert "error: --model models:/nope@champion:" in done.stderr and "Traceback" not in done.stderr
