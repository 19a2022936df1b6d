"""The monitoring flow against a real service: health published, retraining triggered once."""

from __future__ import annotations

import httpx
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName
from prefect.variables import Variable

from flows.monitoring import monitor_router
from flows.training import training_pipeline
from tasks.monitoring import STATE_VARIABLE, RetrainPolicy, decide
from tests.services import edge_service

POLICY = RetrainPolicy(min_accuracy=0.85, min_edge_share=0.8, sustained=2, cooldown_s=3600)


def test_retraining_needs_a_sustained_breach_and_respects_the_cool_down():
    state, reason = decide({}, ["accuracy 0.5 < 0.85"], 0.0, POLICY)
    assert reason is None and state["breaches_in_a_row"] == 1
    state, reason = decide(state, [], 10.0, POLICY)
    assert reason is None and state["breaches_in_a_row"] == 0, "a healthy check resets the count"
    state, _ = decide(state, ["x"], 20.0, POLICY)
    state, reason = decide(state, ["x"], 30.0, POLICY)
    assert reason == "x" and state["last_triggered"] == 30.0
    state, _ = decide(state, ["x"], 40.0, POLICY)
    state, reason = decide(state, ["x"], 50.0, POLICY)
    assert reason is None, "inside the cool-down"
    state, reason = decide(state, ["x"], 30.0 + 3601, POLICY)
    assert reason == "x"


@pytest.mark.usefixtures("prefect_harness")
def test_the_monitor_triggers_retraining_once_when_accuracy_stays_low(tiny_bundle, tmp_path, mlflow_uri):
    training_pipeline.to_deployment(name="on-demand").apply()
    Variable.set(STATE_VARIABLE, {}, overwrite=True)
    service, audit = edge_service(tiny_bundle, tmp_path)
    try:
        texts = [f"my order {i} never arrived and nobody answers" for i in range(10)]
        results = httpx.post(f"{service.url}/v1/classify", json={"texts": texts}).json()["results"]
        for result in results:  # every answer was wrong
            wrong = next(label for label in ("negative", "neutral", "positive") if label != result["label"])
            httpx.post(
                f"{service.url}/v1/feedback", json={"request_id": result["request_id"], "label": wrong}
            )

        parameters = {"preset": "tiny", "overrides": ["classifier.epochs=2"]}
        runs = [monitor_router(service.url, retrain_parameters=parameters) for _ in range(3)]
    finally:
        service.stop()
        audit.close()

    assert [r["retraining"] is not None for r in runs] == [False, True, False]
    assert "accuracy 0 below 0.85" in runs[0]["alerts"] and runs[0]["status"] in {"poor", "critical"}
    with get_client(sync_client=True) as client:
        triggered = client.read_flow_runs(
            deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=["on-demand"]))
        )
    assert len(triggered) == 1 and str(triggered[0].id) == runs[1]["retraining"]
    assert triggered[0].parameters == parameters and "triggered-by-monitor" in triggered[0].tags
