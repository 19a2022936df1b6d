"""The flywheel on the tiny preset, two cycles: real Prefect, real MLflow, real HTTP.

Cycle 0 trains and registers a model; its service answers a stream of new messages with
``audit.keep_text: masked``, some with feedback; cycle 1 retrains from that trail, and its edge
answers a message that cycle 0 had to escalate."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pandas as pd
import pytest
from mlflow import MlflowClient

from edgeroute.cloud import CircuitBreaker
from edgeroute.config import load_serve_config
from edgeroute.releases import open_release
from flows.training import training_pipeline
from tasks.support.dataset import PRODUCTION_HOLDOUT, SPLITS, PreparedData
from tasks.support.synthetic import generate
from tests.services import edge_service

pytestmark = pytest.mark.usefixtures("prefect_harness")
STREAM = 400  # new messages the first service answers
FEEDBACK_EVERY = 4  # one request in four gets its true label back
# 25 messages carrying personal data of every kind the masker knows, with feedback on each, so
# that all of them reach the next training split: none of the raw values may be kept anywhere.
PROBES = [
    ("please write to {} about the refund that never came", "zq.probe01@flywheel-probe.org", "negative"),
    ("my email is {} and the app still crashes", "amelie.probe02@flywheel-probe.net", "negative"),
    ("send the invoice to {} thanks, it was great", "probe03.k@flywheel-probe.io", "positive"),
    ("contact {} because my parcel is late again", "jo_probe04@flywheel-probe.co.uk", "negative"),
    ("reach me at {} the support was excellent", "probe05+x@flywheel-probe.com", "positive"),
    ("card {} was charged twice for one order", "4539 1488 0343 6467", "negative"),
    ("the card ending {} got a refund, lovely", "5425 2334 3010 9903", "positive"),
    ("why was my card {} declined at checkout", "3782 822463 10005", "negative"),
    ("IBAN {} still shows no transfer", "GB33 BUKB 2020 1555 5555 55", "negative"),
    ("please pay into IBAN {} next week", "FR14 2004 1010 0505 0001 3M02 606", "neutral"),
    ("call me on {} about the broken charger", "+44 20 7946 0321", "negative"),
    ("my phone {} never got the code", "+1 415-555-0198", "negative"),
    ("text {} when the courier is close", "(020) 7946 0777", "neutral"),
    ("my NI number is {} and my tax form is wrong", "QQ 48 21 77 D", "negative"),
    ("passport number {} was rejected by your form", "612389054", "negative"),
    ("payment for account {} failed again", "73019466", "negative"),
    ("order {} arrived broken, I want my money back", "#562917", "negative"),
    ("my order {} came early, thank you", "ORD-7QX31KZ9", "positive"),
    ("login from {} was blocked by mistake", "192.0.2.144", "negative"),
    ("my date of birth: {} is wrong on the account", "23/11/1987", "negative"),
    ("I live at {}, Springfield and nothing arrived", "77 Willowbrook Street", "negative"),
    ("Hi, my name is {} and the service was wonderful", "Rosalind Featherstone", "positive"),
    ("ticket {} is still open after two weeks", "TK58213", "negative"),
    ("the code {} from the letter does not work", "88127364", "negative"),
    ("reference {} only, please cancel my plan", "4411902", "neutral"),
]


def _serve_stream(bundle: Path, tmp_path: Path, stream: list[dict]) -> list[str]:
    """Send ``stream`` through the service of ``bundle``, feedback on a share and on every
    probe; the escalated texts."""
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
                if (start + i) % FEEDBACK_EVERY == 0 or row.get("probe"):
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
    stream += [{"text": text.format(value), "label": label, "probe": True} for text, value, label in PROBES]
    escalated = _serve_stream(Path(first["bundle"]), tmp_path, stream)
    assert 0 < len(escalated) < len(stream), "the first model escalates part of the stream"
    escalated = [text for text in escalated if not any(value in text for _, value, _ in PROBES)]

    second = training_pipeline(
        preset="tiny",
        overrides=[*work, "data.production.min_rows=50"],
        production_trail=str(tmp_path / "audit.db"),
    )
    data = PreparedData.load(Path(second["data_dir"]))
    counts = data.production
    assert (
        counts["cloud"] > 0
        and counts["feedback"] > 0
        and counts["holdout"] > 0
        and counts["to_calibration"] > 0
    )
    assert len(data.frame("train")) > len(PreparedData.load(Path(first["data_dir"])).frame("train"))

    client = MlflowClient(mlflow_uri)
    parent = client.get_run(second["mlflow_run_id"])
    [data_run] = client.search_runs(
        [parent.info.experiment_id],
        f"tags.mlflow.parentRunId = '{parent.info.run_id}' and attributes.run_name = 'data'",
    )
    assert data_run.data.metrics["production_cloud"] == counts["cloud"]
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

    # Every probe was trained on or held out, masked; no raw value is in any file written: the
    # trail, the data splits, checkpoints and bundles, the MLflow store, its artifacts and the
    # model cards (registered versions' descriptions, in the store).
    kept = pd.concat([data.frame(name) for name in (*SPLITS, PRODUCTION_HOLDOUT)])["text"]
    assert sum(text.startswith("please write to <EMAIL_ADDRESS>") for text in kept) == 1
    files = [path for path in tmp_path.rglob("*") if path.is_file()]
    assert any(path.name == "model_card.md" for path in files) and any(
        path.suffix == ".onnx" for path in files
    )
    for path in files:
        content = path.read_bytes()
        found = [value for _, value, _ in PROBES if value.encode() in content]
        assert not found, f"{path}: {found}"
