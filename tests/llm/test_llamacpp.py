"""The LLM tier against a real llama.cpp server (Gemma 3 270M, the ``llm-server`` extra): the
commands a user runs and the pipeline stages that ask an LLM, end to end. Run with
``make test-llm``; not part of ``make test`` (the extra builds from source, and each answer with
log-probabilities takes seconds on 2 cores)."""

from __future__ import annotations

import json

import httpx
import pandas as pd
import pytest

from edgeroute.cloud import remote_cloud
from tasks.calibrate import calibrate
from tasks.data import label_with_cloud
from tasks.support.config import load_config
from tests.services import BIN, LLAMA_MODEL, LlamaServer, edge_service, run_cli

pytestmark = pytest.mark.llm

MESSAGES = ["I want a refund, this is unacceptable", "thanks, that was great", "where is my parcel"]


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    pytest.importorskip("llama_cpp", reason="the llm-server extra (make test-llm installs it)")
    server = LlamaServer(tmp_path_factory.mktemp("llama") / "llama-server.log")
    yield server
    server.stop()


def llm_settings(llama: LlamaServer) -> list[str]:
    """The pipeline's cloud section for ``llama``: generous limits, its answers take seconds."""
    return ["cloud.backend=openai", f"cloud.url={llama.url}", f"cloud.model={LLAMA_MODEL}",
            "cloud.timeout_s=120", "cloud.deadline_s=300"]  # fmt: skip


def cloud_flags(llama: LlamaServer) -> list[str]:
    return ["--cloud-backend", "openai", "--cloud-url", llama.url, "--cloud-model", LLAMA_MODEL,
            "--set", "cloud.timeout_s=120", "--set", "cloud.deadline_s=300"]  # fmt: skip


def test_classify_answers_from_the_llm_with_a_label_confidence(escalating_bundle, llama, tmp_path):
    command = [str(BIN / "edgeroute"), "classify", "--bundle", str(escalating_bundle), "--json"]
    result = run_cli([*command, *cloud_flags(llama), *MESSAGES], tmp_path)
    assert result.returncode == 0, result.stderr
    decisions = [json.loads(line) for line in result.stdout.splitlines()]
    assert [d["route"] for d in decisions] == ["cloud"] * 3
    assert all(1 / 3 <= d["confidence"] < 1 for d in decisions)


def test_guided_choice_is_refused_at_start(escalating_bundle, llama, tmp_path):
    command = [str(BIN / "edgeroute"), "classify", "--bundle", str(escalating_bundle), *cloud_flags(llama)]
    result = run_cli([*command, "--set", "cloud.constraint=guided_choice", MESSAGES[2]], tmp_path)
    assert result.returncode == 2 and "cloud.constraint guided_choice" in result.stderr


def test_simulate_prices_the_llms_answers(escalating_bundle, llama, tmp_path):
    data = tmp_path / "messages.csv"
    pd.DataFrame({"text": MESSAGES}).to_csv(data, index=False)
    command = [str(BIN / "edgeroute"), "simulate", "--data", str(data), "--bundle", str(escalating_bundle)]
    prices = ["--set", "cloud.price_per_1k_input_tokens=0.5", "--set", "cloud.price_per_1k_output_tokens=1.5"]
    result = run_cli([*command, *cloud_flags(llama), *prices, "--json"], tmp_path)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["edge_share"] == 0.0 and "cloud_error" not in summary["reasons"]
    assert summary["cost_per_query"] > 0.001  # the edge's 0.001, and the tokens


def test_the_service_shows_the_form_it_found_and_escalates_to_the_llm(escalating_bundle, llama, tmp_path):
    settings = ("cloud.backend=openai", f"cloud.model={LLAMA_MODEL}", "cloud.timeout_s=120",
                "cloud.answer_within_s=120", "limits.timeout_s=240")  # fmt: skip
    running, _ = edge_service(escalating_bundle, tmp_path, llama.url, None, *settings)
    try:
        assert httpx.get(f"{running.url}/readyz").json()["cloud_constraint"] == "json_object"
        response = httpx.post(f"{running.url}/v1/classify", json={"text": MESSAGES[0]}, timeout=240)
    finally:
        running.stop()
    (result,) = response.json()["results"]
    assert result["route"] == "cloud" and result["reason"] != "cloud_error"


def test_the_data_stage_labels_messages_with_the_llm(llama, tmp_path):
    labelling = ["data.label_with_cloud=true", "data.labels=[negative, neutral, positive]"]
    config = load_config("tiny", [f"work_dir={tmp_path}", *llm_settings(llama), *labelling])
    labelled, report = label_with_cloud(pd.DataFrame({"text": MESSAGES}), config, "messages.csv")
    assert report["labelled"] == 3 and set(labelled["label"]) <= {"negative", "neutral", "positive"}


def test_calibration_fits_the_llms_temperature(tiny_bundle, llama, tmp_path):
    from edgeroute.bundle import EDGE_MODEL, load_bundle

    bundle = load_bundle(tiny_bundle)
    edge = bundle.classifier(EDGE_MODEL)
    config = load_config("tiny", llm_settings(llama))
    cloud = remote_cloud(config.cloud, bundle.labels)
    more = ["the agent was rude and hung up", "great job, fixed in minutes", "what are your hours"]
    labels = ["negative", "positive", "neutral"] * 2
    frame = pd.DataFrame({"text": [*MESSAGES, *more], "label": labels})
    calibration = calibrate(edge, cloud, frame, config.router, tmp_path / "calibrate")
    record = json.loads(calibration.router_json.read_text())["calibration"]["cloud"]
    assert record["constraint"] == "json_object" and record["model"] == LLAMA_MODEL
    assert record["scored_answers"] == 6 and record["temperature"] > 0
    assert {"cloud_temperature", "cloud_ece_before", "cloud_ece_after"} <= set(calibration.metrics)
