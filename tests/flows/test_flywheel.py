"""The flywheel on the tiny preset, two cycles: real Prefect, real MLflow, real HTTP.

Cycle 0 trains and registers a model; its service answers a stream of new messages with
``audit.keep_text: masked``, some with feedback; cycle 1 retrains from that trail, and its edge
answers a message that cycle 0 had to escalate."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from mlflow import MlflowClient

from edgeroute.cloud import CircuitBreaker
from edgeroute.config import load_serve_config
from edgeroute.releases import open_release
from flows.training import training_pipeline
from tasks.support.dataset import PRODUCTION_HOLDOUT, PreparedData
from tasks.support.synthetic import generate
from tests.services import edge_service

pytestmark = pytest.mark.usefixtures("prefect_harness")
STREAM = 400  # new messages the first service answers
FEEDBACK_EVERY = 4  # one request in four gets its true label back


def _serve_stream(bundle: Path, tmp_path: Path, stream: list[dict]) -> list[str]:
    """Send ``stream`` through the service of ``bundle``, feedback on a share; the escalated texts."""
    running, audit = edge_service(bundle, tmp_path, None, None, "audit.keep_text=masked")
    escalated = []
    try:
        for start in range(0, len(stream), 32):
            chunk = stream[start : start + 32]
            response = httpx.post(f"{running.url}/v1/classify", json={"texts": [r["text"] for r in chunk]})
            assert response.status_code == 200, response.text
            for i, (row, result) in enumerate(zip(chunk, response.json()["results"], strict=True)):
                if result["route"] == "cloud":
                    escalated.append(row["text"])
                if (start + i) % FEEDBACK_EVERY == 0:
                    body = {"request_id": result["request_id"], "label": row["label"]}
                    assert httpx.post(f"{running.url}/v1/feedback", json=body).status_code == 200
    finally:
        running.stop()
        audit.close()
    return escalated


def test_the_second_student_answers_on_the_edge_a_text_the_first_escalated(tmp_path, mlflow_uri):
    # The tiny model is rarely confident: each router answers its most confident half on the
    # edge. Its test split has 60 rows, so one answer changed is 1.7 points, past any 99 % gate.
    work = [
        f"work_dir={tmp_path / 'work'}", "router.target=edge_share", "router.edge_share=0.5",
        "gate.min_accuracy_retention=0.95", "gate.min_macro_f1_retention=0.95",
        "gate.min_system_retention=0.9",
    ]  # fmt: skip
    first = training_pipeline(preset="tiny", overrides=work)
    seen = set(PreparedData.load(Path(first["data_dir"])).frame("train")["text"])
    stream = [row for row in generate(STREAM + 200, seed=11) if row["text"] not in seen][:STREAM]
    escalated = _serve_stream(Path(first["bundle"]), tmp_path, stream)
    assert 0 < len(escalated) < len(stream), "the first model escalates part of the stream"

    second = training_pipeline(
        preset="tiny",
        overrides=[*work, "data.production.min_rows=50"],
        production_trail=str(tmp_path / "audit.db"),
    )
    data = PreparedData.load(Path(second["data_dir"]))
    counts = data.production
    assert counts["train_cloud"] > 0 and counts["train_feedback"] > 0 and counts["holdout"] > 0
    assert len(data.frame("train")) > len(PreparedData.load(Path(first["data_dir"])).frame("train"))

    client = MlflowClient(mlflow_uri)
    parent = client.get_run(second["mlflow_run_id"])
    [data_run] = client.search_runs(
        [parent.info.experiment_id],
        f"tags.mlflow.parentRunId = '{parent.info.run_id}' and attributes.run_name = 'data'",
    )
    assert data_run.data.metrics["production_train_cloud"] == counts["train_cloud"]
    [promote_run] = client.search_runs(
        [parent.info.experiment_id],
        f"tags.mlflow.parentRunId = '{parent.info.run_id}' and attributes.run_name = 'promote'",
    )
    assert "on the production holdout" in promote_run.data.tags["decision"]
    assert f"challenger_{PRODUCTION_HOLDOUT}_accuracy" in promote_run.data.metrics

    config = load_serve_config()
    release = open_release(Path(second["bundle"]), "flywheel/2", config, CircuitBreaker(), lazy=False)
    answers = release.route(escalated)
    on_edge = [text for text, d in zip(escalated, answers, strict=True) if d.route == "edge"]
    assert on_edge, json.dumps({"escalated": len(escalated), "second": [d.reason for d in answers]})
