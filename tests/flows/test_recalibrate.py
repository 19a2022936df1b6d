"""Recalibration of the champion's router on new data: a new version, nothing retrained."""

from __future__ import annotations

import pandas as pd
import pytest
from mlflow import MlflowClient

from edgeroute.bundle import load_bundle
from flows.recalibrate import recalibrate_router
from tasks import registry
from tasks.support import tracking
from tasks.support.synthetic import generate

pytestmark = pytest.mark.usefixtures("prefect_harness")
FORCED_SHARE = ["router.target=edge_share", "router.edge_share=0.8", "gate.min_system_retention=0.9"]


def test_recalibration_registers_a_new_router_beside_the_same_models(tmp_path, mlflow_uri, tiny_bundle):
    with tracking.pipeline_run("edgeroute", "training"):
        first = registry.register_bundle(tiny_bundle, "edgeroute", ["hi"])
        registry.set_champion("edgeroute", first.version, "first champion")
    pd.DataFrame(generate(600, seed=11)).to_csv(tmp_path / "new.csv", index=False)

    result = recalibrate_router(
        data_path=str(tmp_path / "new.csv"),
        preset="tiny",
        # A forced edge share trades accuracy for cost: the tiny model's system gate is relaxed.
        overrides=[*FORCED_SHARE, f"work_dir={tmp_path / 'work'}"],
    )
    assert result["registered_model"] == "models:/edgeroute/2"
    new, old = load_bundle(registry.download_bundle("models:/edgeroute/2")), load_bundle(tiny_bundle)
    for name in ("edge/model.onnx", "cloud/model.onnx", "tokenizer.json"):
        assert new.manifest["files"][name] == old.manifest["files"][name]
    settings = new.router_settings()
    assert settings.calibration["target"] == "edge_share" and settings.calibration["target_met"]
    assert settings.min_confidence != old.router_settings().min_confidence
    assert new.manifest["lineage"]["recalibrated_from"] == "models:/edgeroute@champion"
    assert new.manifest["lineage"]["data_digest"] == old.manifest["lineage"]["data_digest"]
    assert new.manifest["metrics"]["router"]["calibration_edge_share"] >= 0.8
    client = MlflowClient(mlflow_uri)
    assert client.get_registered_model("edgeroute").aliases["challenger"] == 2
    promote = client.search_runs(
        [client.get_experiment_by_name("edgeroute").experiment_id], "attributes.run_name = 'promote'"
    )
    promoted = "True" if result["promoted"] == "yes" else "False"
    assert promote and promote[0].data.tags["promoted"] == promoted
