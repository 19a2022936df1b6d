"""The runtime's command line, run as a user runs it: real processes on a real bundle."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from tests.services import BIN, run_cli, runtime_only


def test_classify_routes_arguments_and_stdin(tmp_path, tiny_bundle):
    texts = ["thanks, the refund arrived quickly", "my order never came and nobody answers"]
    done = run_cli(
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


def test_classifys_tab_separated_output_opens_safely_in_a_spreadsheet(tmp_path, tiny_bundle):
    texts = ['=HYPERLINK("http://evil.example","refund")', "@SUM(1+1) where is my order", "a\ttab inside"]
    done = run_cli([str(BIN / "edgeroute"), "classify", "--bundle", str(tiny_bundle), *texts], tmp_path)
    assert done.returncode == 0, done.stderr
    lines = [line.split("\t") for line in done.stdout.splitlines()]
    assert {len(cols) for cols in lines} == {6}, "a tab in a text must not add a column"
    assert [cols[-1] for cols in lines] == [f"'{texts[0]}", f"'{texts[1]}", "a tab inside"]


def test_classify_without_a_bundle_or_with_a_broken_one_exits_2(tmp_path, tiny_bundle):
    done = run_cli([str(BIN / "edgeroute"), "classify", "hello"], tmp_path)
    assert done.returncode == 2 and "--bundle DIR or --model" in done.stderr
    done = run_cli([str(BIN / "edgeroute"), "classify", "--bundle", str(tmp_path), "hello"], tmp_path)
    assert done.returncode == 2 and "not a bundle (no manifest.json)" in done.stderr


def test_simulate_projects_the_monthly_split_and_cost(tmp_path, tiny_bundle, tiny_prepared):
    test = tiny_prepared[1].frame("test").rename(columns={"text": "message", "label": "truth"})
    test.to_csv(tmp_path / "tickets.csv", index=False)
    args = [str(BIN / "edgeroute"), "simulate", "--data", "tickets.csv", "--bundle", str(tiny_bundle)]
    done = run_cli(
        [*args, "--text-column", "message", "--label-column", "truth", "--per-month", "1000000", "--json"],
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["queries"] == len(test) and sum(report["reasons"].values()) == len(test)
    assert report["monthly_cost"] == pytest.approx(report["cost_per_query"] * 1_000_000)
    assert report["monthly_cloud_only_cost"] == pytest.approx(0.0136 * 1_000_000)
    assert 0 <= report["accuracy"] <= 1

    text = run_cli([*args, "--text-column", "message"], tmp_path)
    assert text.returncode == 0, text.stderr
    assert f"routed {len(test):,} messages" in text.stdout and "per month (1,000,000 messages)" in text.stdout

    wrong = run_cli(args, tmp_path)
    assert wrong.returncode == 1
    assert "tickets.csv: column 'text' not found; columns are: 'message', 'truth'" in wrong.stderr


def test_the_runtime_serves_and_routes_without_the_training_side(tmp_path, tiny_bundle):
    routed = runtime_only(
        ["classify", "--bundle", str(tiny_bundle), "--json", "where is my parcel?"], tmp_path
    )
    assert routed.returncode == 0, routed.stderr
    assert json.loads(routed.stdout)["label"] in {"negative", "neutral", "positive"}
    (tmp_path / "tickets.csv").write_text("text\nthanks a lot\nmy card was charged twice\n")
    simulated = runtime_only(
        ["simulate", "--data", "tickets.csv", "--bundle", str(tiny_bundle), "--json"], tmp_path
    )
    assert simulated.returncode == 0, simulated.stderr
    assert json.loads(simulated.stdout)["queries"] == 2
    assert runtime_only(["serve", "--help"], tmp_path).returncode == 0


def test_serve_reads_its_config_file_and_names_a_bad_field(tmp_path, tiny_bundle):
    (tmp_path / "serve.yaml").write_text(
        yaml.safe_dump({"limits": {"max_batch": 0}, "batching": {"workers": 2}})
    )
    done = run_cli(
        [str(BIN / "edgeroute"), "serve", "--bundle", str(tiny_bundle), "-c", "serve.yaml"], tmp_path
    )
    assert done.returncode == 2
    assert "limits.max_batch: Input should be greater than or equal to 1" in done.stderr
    done = run_cli(
        [str(BIN / "edgeroute"), "serve", "--bundle", str(tiny_bundle), "--set", "breaker.colour=red"],
        tmp_path,
    )
    assert done.returncode == 2 and "breaker.colour: unknown field" in done.stderr


def test_a_runtime_command_imports_nothing_of_the_training_side(tmp_path, tiny_bundle):
    script = (
        "import sys\nfrom edgeroute.cli import app\n"
        f"app(['classify', '--bundle', {str(tiny_bundle)!r}, 'hi'], standalone_mode=False)\n"
        "print(sorted(m for m in ('prefect', 'mlflow', 'pandas', 'flows', 'tasks') if m in sys.modules))"
    )
    done = run_cli([sys.executable, "-c", script], tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "[]"
