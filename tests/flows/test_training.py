"""The training flow on the tiny preset: real Prefect, real MLflow."""

from __future__ import annotations

import pytest
from mlflow import MlflowClient
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

from flows.training import training_pipeline
from tasks.data import SPLITS, DataValidationError

pytestmark = pytest.mark.usefixtures("prefect_harness")


def test_flow_tracks_config_data_and_datasets(tmp_path, mlflow_uri):
    result = training_pipeline(preset="tiny", overrides=[f"work_dir={tmp_path / 'work'}"])

    client = MlflowClient(mlflow_uri)
    parent = client.get_run(result["mlflow_run_id"])
    assert parent.info.status == "FINISHED"
    assert parent.data.params["model.base"] == "tiny"
    assert parent.data.params["data.n_samples"] == "400"
    assert parent.data.tags["preset"] == "tiny"
    assert "config.yaml" in {a.path for a in client.list_artifacts(parent.info.run_id)}

    (child,) = client.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    assert child.info.run_name == "data"
    assert child.data.tags["data.digest"] == result["data_digest"]
    assert child.data.metrics["num_classes"] == 3
    contexts = {
        tag.value for d in child.inputs.dataset_inputs for tag in d.tags if tag.key == "mlflow.data.context"
    }
    assert contexts == set(SPLITS)
    assert {a.path for a in client.list_artifacts(child.info.run_id)} >= {
        "data.json",
        "class_counts.json",
    }

    with get_client(sync_client=True) as prefect:
        artifacts = prefect.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["data-summary"]))
        )
    assert artifacts and result["data_digest"][:16] in artifacts[0].description


def test_bad_data_fails_the_flow_and_its_run_and_writes_nothing(tmp_path, mlflow_uri):
    state = training_pipeline(
        preset="tiny",
        overrides=[f"work_dir={tmp_path / 'work'}"],
        data_path=str(tmp_path / "missing.csv"),
        return_state=True,
    )
    assert state.is_failed()
    with pytest.raises(DataValidationError, match="data file not found"):
        state.result()
    client = MlflowClient(mlflow_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("edgeroute").experiment_id])
    assert run.info.status == "FAILED"
    assert not (tmp_path / "work").exists()
