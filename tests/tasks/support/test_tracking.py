"""The MLflow helper: where the store is, and runs nested by explicit id."""

from __future__ import annotations

import threading

import pytest
from mlflow import MlflowClient

from tasks.support import tracking


def test_default_store_is_sqlite_under_mlflow(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    assert tracking.tracking_uri() == f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    with tracking.pipeline_run("exp", "parent") as run_id:
        tracking.log_text(run_id, "hello", "note.txt")
    assert (tmp_path / "mlflow" / "mlflow.db").is_file()
    assert list((tmp_path / "mlflow" / "artifacts" / "exp").glob(f"{run_id}/artifacts/note.txt"))
    assert not (tmp_path / "mlruns").exists()


def test_environment_uri_wins(mlflow_uri):
    assert tracking.tracking_uri() == mlflow_uri


def test_stage_runs_nest_under_the_pipeline_run_from_any_thread(mlflow_uri):
    with tracking.pipeline_run("exp", "parent", {"preset": "tiny"}) as parent:
        tracking.log_params(parent, {"data": {"splits": {"train": 0.7}}, "seed": 1})

        def stage():
            with tracking.stage_run(parent, "data") as child:
                tracking.log_metrics(child, {"rows": 12})
                results.append(child)

        results: list[str] = []
        worker = threading.Thread(target=stage)
        worker.start()
        worker.join()
    client = MlflowClient(mlflow_uri)
    parent_run, child_run = client.get_run(parent), client.get_run(results[0])
    assert parent_run.data.params == {"data.splits.train": "0.7", "seed": "1"}
    assert parent_run.data.tags["preset"] == "tiny"
    assert child_run.data.tags["mlflow.parentRunId"] == parent
    assert child_run.info.run_name == "data"
    assert child_run.data.metrics == {"rows": 12.0}
    assert parent_run.info.status == child_run.info.status == "FINISHED"


def test_a_failing_block_marks_its_runs_failed(mlflow_uri):
    ids = []
    with pytest.raises(RuntimeError), tracking.pipeline_run("exp", "parent") as parent:
        ids.append(parent)
        with tracking.stage_run(parent, "data") as child:
            ids.append(child)
            raise RuntimeError("boom")
    client = MlflowClient(mlflow_uri)
    assert [client.get_run(i).info.status for i in ids] == ["FAILED", "FAILED"]


def test_label_names_that_mlflow_refuses_in_keys_are_made_safe(mlflow_uri):
    with tracking.pipeline_run("exp", "parent") as run_id:
        tracking.log_metrics(run_id, {"f1.reverted_card_payment?": 0.5, "f1.top up (card)": 0.25})
    metrics = MlflowClient(mlflow_uri).get_run(run_id).data.metrics
    assert metrics == {"f1.reverted_card_payment_": 0.5, "f1.top up _card_": 0.25}
