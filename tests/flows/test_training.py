"""The training flow on the tiny preset: real Prefect, real MLflow."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterKey,
    FlowRunFilter,
    FlowRunFilterId,
)

import tasks.classifier
from edgeroute.bundle import CLOUD_MODEL, EDGE_MODEL, load_bundle
from flows.training import training_pipeline
from tasks.behaviour import BehaviourFailed
from tasks.compress import op_counts
from tasks.data import DataValidationError
from tasks.gate import GateFailed
from tasks.support.dataset import SPLITS, PreparedData
from tasks.support.synthetic import generate
from tests.services import OpenAIStandIn, task_states

pytestmark = pytest.mark.usefixtures("prefect_harness")


def _task_states(state) -> dict[str, str]:
    return task_states(state.state_details.flow_run_id)


def test_flow_tracks_config_data_and_datasets(tmp_path, mlflow_uri):
    result = training_pipeline(preset="tiny", overrides=[f"work_dir={tmp_path / 'work'}"])

    client = MlflowClient(mlflow_uri)
    parent = client.get_run(result["mlflow_run_id"])
    assert parent.info.status == "FINISHED"
    assert parent.data.params["model.base"] == "tiny"
    assert parent.data.params["data.n_samples"] == "600"
    assert parent.data.tags["preset"] == "tiny"
    assert "config.yaml" in {a.path for a in client.list_artifacts(parent.info.run_id)}

    children = {
        run.info.run_name: run
        for run in client.search_runs(
            [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
        )
    }
    assert set(children) == {
        "data", "dapt", "classifier", "distill", "compress", "benchmark", "gate", "calibrate", "system-gate",
        "behaviour", "register", "promote",
    }  # fmt: skip
    champion = client.get_model_version_by_alias("edgeroute", "champion")
    assert result["registered_model"] == f"models:/edgeroute/{champion.version}"
    assert champion.run_id == children["register"].info.run_id
    assert champion.tags["lineage.mlflow_run_id"] == parent.info.run_id
    assert children["promote"].data.tags["promoted"] == "True"
    assert "summary.md" in {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert (
        children["dapt"].data.metrics["perplexity_after"] < children["dapt"].data.metrics["perplexity_before"]
    )
    assert children["classifier"].data.metrics["test_accuracy"] == pytest.approx(
        float(result["test_accuracy"]), abs=1e-4
    )
    assert "confusion_matrix.png" in {
        a.path for a in client.list_artifacts(children["classifier"].info.run_id)
    }
    assert (
        parent.data.metrics["classifier.test_macro_f1"]
        == children["classifier"].data.metrics["test_macro_f1"]
    )
    assert parent.data.tags["dapt.checkpoint"] == result["dapt_checkpoint"]
    distill = children["distill"]
    losses = [m.value for m in client.get_metric_history(distill.info.run_id, "train_loss")]
    assert len(losses) >= 2 and losses[-1] < losses[0], "the distillation loss falls"
    assert distill.data.metrics["student_layers"] == 1 and distill.data.tags["student_init"] == "teacher"
    assert children["compress"].data.metrics["quantized_ops"] > 0
    sizes = {k: v for k, v in children["benchmark"].data.metrics.items() if k.endswith(".size_mb")}
    assert sizes["int8.size_mb"] < sizes["fp32.size_mb"] < sizes["teacher_fp32.size_mb"]
    assert sizes["int8.size_mb"] < sizes["teacher_int8.size_mb"]
    assert children["system-gate"].data.metrics["passed"] == 1
    behaviour = children["behaviour"].data.metrics
    assert behaviour["passed"] == 1 and 0 <= behaviour["system.invariance.email"] <= 1
    assert behaviour["edge.mft"] == max(v for k, v in behaviour.items() if k.startswith("edge.mft."))
    assert load_bundle(Path(result["bundle"])).manifest["metrics"]["behaviour"] == pytest.approx(behaviour)
    assert "## Behavioural checks" in result["summary"]
    assert "gate_report.md" in {a.path for a in client.list_artifacts(children["gate"].info.run_id)}
    calibrate = children["calibrate"]
    assert {a.path for a in client.list_artifacts(calibrate.info.run_id)} >= {
        "router.json", "router_curve.csv", "router_curve.png",
    }  # fmt: skip
    assert calibrate.data.metrics["test_edge_share"] == pytest.approx(
        float(result["router_edge_share"].rstrip(" %")) / 100, abs=1e-3
    )
    bundle = load_bundle(Path(result["bundle"]))
    settings = bundle.router_settings()
    assert settings.min_confidence == calibrate.data.metrics["min_confidence"]
    assert settings.calibration["target"] == "max_edge_share_within"
    assert bundle.manifest["metrics"]["router"]["test_accuracy"] == calibrate.data.metrics["test_accuracy"]
    assert bundle.manifest["lineage"]["mlflow_run_id"] == parent.info.run_id
    profile = bundle.profile()  # the reference drift is measured against: the validation split
    validation = PreparedData.load(Path(bundle.manifest["lineage"]["data_dir"])).frame("validation")
    assert profile is not None and profile.samples == len(validation)
    assert profile.labels == bundle.labels and sum(profile.shares["length"]) == pytest.approx(1)
    lineage = bundle.manifest["lineage"]
    assert lineage["edge_model"] == "student" and lineage["student_layers"] == 1
    assert lineage["student_kept_layers"] == [0] and lineage["teacher_base_model"] == "tiny"
    assert champion.tags["lineage.student_layers"] == "1"
    cloud_accuracy = bundle.manifest["metrics"]["cloud"]["accuracy"]
    assert cloud_accuracy == pytest.approx(children["benchmark"].data.metrics["teacher_fp32.accuracy"])
    assert bundle.manifest["lineage"]["data_digest"] == result["data_digest"]
    child = children["data"]
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

    this_run = FlowRunFilter(id=FlowRunFilterId(any_=[parent.data.tags["prefect.flow_run_id"]]))
    with get_client(sync_client=True) as prefect:
        (data_summary,) = prefect.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["data-summary"])),
            flow_run_filter=this_run,
        )
        (summary,) = prefect.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["training-summary"])),
            flow_run_filter=this_run,
        )
    assert result["data_digest"][:16] in data_summary.description
    assert summary.data == result["summary"]
    assert f"{result['router_edge_share']}** |" in summary.data and "promoted to champion" in summary.data


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


def test_a_rerun_takes_finished_stages_from_the_cache(tmp_path, mlflow_uri):
    overrides = [f"work_dir={tmp_path / 'work'}"]
    first = training_pipeline(preset="tiny", overrides=overrides, return_state=True)
    second = training_pipeline(preset="tiny", overrides=overrides, return_state=True)
    stages = ("domain-adapt", "train-classifier", "distill-student")
    assert {_task_states(first)[stage] for stage in stages} == {"Completed"}
    assert {_task_states(second)[stage] for stage in stages} == {"Cached"}
    assert second.result()["student_checkpoint"] == first.result()["student_checkpoint"]
    assert _task_states(second)["bundle"] == "Completed"
    assert second.result()["classifier_checkpoint"] == first.result()["classifier_checkpoint"]
    other_seed = training_pipeline(
        preset="tiny", overrides=[*overrides, "classifier.patience=1"], return_state=True
    )
    assert _task_states(other_seed)["domain-adapt"] == "Cached"
    assert _task_states(other_seed)["train-classifier"] == "Completed"
    other_student = training_pipeline(
        preset="tiny", overrides=[*overrides, "distill.alpha=0.9"], return_state=True
    )
    assert _task_states(other_student)["train-classifier"] == "Cached"
    assert _task_states(other_student)["distill-student"] == "Completed"


def test_a_crash_in_a_later_stage_keeps_the_earlier_ones(tmp_path, mlflow_uri, monkeypatch):
    overrides = [f"work_dir={tmp_path / 'work'}"]

    def killed(*args, **kwargs):
        raise RuntimeError("classifier process killed")

    with monkeypatch.context() as patch:
        patch.setattr(tasks.classifier, "fine_tune", killed)
        crashed = training_pipeline(preset="tiny", overrides=overrides, return_state=True)
    assert crashed.is_failed()
    assert not list((tmp_path / "work" / "checkpoints").glob("classifier-*"))
    resumed = training_pipeline(preset="tiny", overrides=overrides, return_state=True)
    assert resumed.is_completed()
    assert _task_states(resumed)["domain-adapt"] == "Cached"
    assert _task_states(resumed)["train-classifier"] == "Completed"


def test_a_gate_that_cannot_pass_fails_the_flow_with_a_report_and_no_bundle(tmp_path, mlflow_uri):
    overrides = [f"work_dir={tmp_path / 'work'}", "gate.min_accuracy_retention=1.5", "gate.max_attempts=3"]
    state = training_pipeline(preset="tiny", overrides=overrides, return_state=True)
    assert state.is_failed()
    with pytest.raises(GateFailed) as failed:
        state.result()
    report = str(failed.value)
    assert report.count("accuracy_retention") == 3
    # max_attempts=3: the primary, one other calibration method, then dynamic INT8 last.
    assert (
        "| 1 | static, minmax calibration |" in report
        and "| 2 | static, percentile calibration |" in report
        and "| 3 | dynamic |" in report
    )
    assert not (tmp_path / "work" / "bundles").exists()
    client = MlflowClient(mlflow_uri)
    assert client.search_registered_models() == []
    runs = {
        r.info.run_name: r
        for r in client.search_runs([client.get_experiment_by_name("edgeroute").experiment_id])
    }
    assert runs["gate"].info.status == "FAILED"
    parent = next(r for name, r in runs.items() if name.startswith("edgeroute-tiny"))
    assert parent.info.status == "FAILED"
    with get_client(sync_client=True) as prefect:
        (artifact,) = prefect.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["gate-report"])),
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id])),
        )
    assert "Quantization gate" in artifact.data


@pytest.mark.slow
def test_demo_preset_on_the_real_base_model(tmp_path, mlflow_uri):
    """Acceptance on MiniLM: DAPT (off in the preset, which does not need it) lowers held-out
    perplexity; the classifier beats TF-IDF."""
    result = training_pipeline(
        preset="demo", overrides=[f"work_dir={tmp_path / 'work'}", "dapt.enabled=true"]
    )
    run = MlflowClient(mlflow_uri).get_run(result["mlflow_run_id"])
    metrics = run.data.metrics
    assert metrics["dapt.perplexity_after"] < metrics["dapt.perplexity_before"]
    assert metrics["classifier.test_accuracy"] > metrics["classifier.baseline_tfidf_test_accuracy"] + 0.05


def test_without_dapt_the_classifier_starts_from_the_base_model(tmp_path, mlflow_uri):
    result = training_pipeline(
        preset="tiny", overrides=[f"work_dir={tmp_path / 'work'}", "dapt.enabled=false"]
    )
    client = MlflowClient(mlflow_uri)
    parent = client.get_run(result["mlflow_run_id"])
    children = client.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    assert "dapt" not in {run.info.run_name for run in children}
    assert result["dapt_checkpoint"] == str(
        tmp_path / "work" / "models" / result["data_digest"][:16] / "tiny-bert"
    )
    assert parent.data.tags["base.checkpoint"] == result["dapt_checkpoint"]


def _gate_report(state) -> str:
    """The latest ``gate-report`` artifact of a flow run."""
    with get_client(sync_client=True) as prefect:
        artifacts = prefect.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["gate-report"])),
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id])),
        )
    return max(artifacts, key=lambda a: a.created).data


def test_a_system_gate_that_cannot_pass_fails_the_flow_and_registers_nothing(tmp_path, mlflow_uri):
    overrides = [f"work_dir={tmp_path / 'work'}", "gate.min_system_retention=1.5"]
    state = training_pipeline(preset="tiny", overrides=overrides, return_state=True)
    assert state.is_failed()
    assert _task_states(state)["gate"] == "Completed" and _task_states(state)["system-gate"] == "Failed"
    with pytest.raises(GateFailed) as failed:
        state.result()
    report = str(failed.value)
    assert "# System gate" in report and "system_retention" in report and ">= 1.5: FAIL" in report
    assert "| edge only | cloud only | routed |" in report and "# Quantization gate" in report
    assert _gate_report(state) == report
    assert not (tmp_path / "work" / "bundles").exists()
    client = MlflowClient(mlflow_uri)
    assert client.search_registered_models() == []
    runs = {
        r.info.run_name: r
        for r in client.search_runs([client.get_experiment_by_name("edgeroute").experiment_id])
    }
    assert runs["system-gate"].info.status == "FAILED" and runs["system-gate"].data.metrics["passed"] == 0


def test_without_distillation_the_edge_is_the_teachers_int8_twin(tmp_path, mlflow_uri):
    result = training_pipeline(
        preset="tiny", overrides=[f"work_dir={tmp_path / 'work'}", "distill.enabled=false"]
    )
    client = MlflowClient(mlflow_uri)
    parent = client.get_run(result["mlflow_run_id"])
    children = {
        run.info.run_name: run
        for run in client.search_runs(
            [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
        )
    }
    assert "distill" not in children and "student_checkpoint" not in result
    assert not any(k.startswith("teacher_") for k in children["benchmark"].data.metrics)
    bundle = load_bundle(Path(result["bundle"]))
    softmax = {name: op_counts(bundle.path / name)["Softmax"] for name in (EDGE_MODEL, CLOUD_MODEL)}
    assert softmax == {EDGE_MODEL: 2, CLOUD_MODEL: 2}
    assert bundle.manifest["lineage"]["edge_model"] == "teacher_int8"
    assert "student_layers" not in bundle.manifest["lineage"]
    assert "| | FP32 (cloud tier) | INT8 (edge tier) |" in result["summary"]


def test_escalation_lifts_a_weak_student_towards_its_teacher(tmp_path, mlflow_uri):
    """A student wrecked by a learning rate far too high: the router sends its doubtful answers
    to the teacher, and the routed system is right more often than the student alone."""
    overrides = [
        f"work_dir={tmp_path / 'work'}", "distill.epochs=1", "distill.learning_rate=1.0",
        "router.tolerance=0.1", "gate.min_system_retention=0.9",
    ]  # fmt: skip
    result = training_pipeline(preset="tiny", overrides=overrides)
    client = MlflowClient(mlflow_uri)
    parent = client.get_run(result["mlflow_run_id"])
    (calibrate,) = client.search_runs(
        [parent.info.experiment_id],
        f"tags.mlflow.parentRunId = '{parent.info.run_id}' and tags.mlflow.runName = 'calibrate'",
    )
    m = calibrate.data.metrics
    assert m["test_edge_only_accuracy"] < m["test_cloud_only_accuracy"], "the student is the weaker tier"
    assert m["test_accuracy"] > m["test_edge_only_accuracy"]
    assert m["test_edge_share"] < 1


def test_an_llm_labels_the_data_and_calibrates_the_router_paying_once_a_text(
    tmp_path, mlflow_uri, monkeypatch
):
    from edgeroute.privacy import mask
    from tasks.support.synthetic import generate

    key = "sk-pipeline-9d2e41"
    monkeypatch.setenv("EDGEROUTE_CLOUD_API_KEY", key)
    llm = OpenAIStandIn(api_key=key)
    unlabelled = tmp_path / "tickets.csv"  # the messages, no label column
    texts = [row["text"] for row in generate(600, seed=3)]
    pd.DataFrame({"text": texts}).to_csv(unlabelled, index=False)
    overrides = [
        f"work_dir={tmp_path / 'work'}", f"data.path={unlabelled}", "data.label_with_cloud=true",
        "data.labels=[negative, neutral, positive]", "cloud.backend=openai", f"cloud.url={llm.url}",
        "cloud.model=stand-in-7b", "cloud.price_per_1k_input_tokens=0.5",
        "cloud.price_per_1k_output_tokens=1.5", "cloud.examples_per_label=1",
    ]  # fmt: skip
    try:
        result = training_pipeline(preset="tiny", overrides=overrides)
        asked = llm.texts()
        # One request a distinct prompt: each message once, zero-shot, to label it, then once with
        # the few-shot examples for calibration and the test split (the test split's answered
        # from the cache), then each new text of the behavioural checks once. Nothing unmasked.
        labelled = {mask(text) for text in texts}
        assert len(set(asked)) == len(asked) > len(labelled)
        prompts = "\n".join(asked)
        assert all(text in prompts for text in labelled)
        assert all("@" not in text for text in llm.texts())
        bundle = load_bundle(Path(result["bundle"]))
        card = json.loads(
            (bundle.path.parent.parent / "data" / result["data_digest"][:16] / "data.json").read_text()
        )
        assert card["cloud_labels"]["model"] == "stand-in-7b" and card["cloud_labels"]["labelled"] >= 590
        lineage = bundle.manifest["lineage"]
        assert (lineage["cloud_backend"], lineage["cloud_model"], lineage["cloud_url"]) == (
            "openai",
            "stand-in-7b",
            llm.url,
        )
        client = MlflowClient(mlflow_uri)
        calibrate = client.search_runs(
            [client.get_run(result["mlflow_run_id"]).info.experiment_id], "attributes.run_name = 'calibrate'"
        )[0]
        # The router was calibrated against the LLM, whose own labels the data carries.
        assert calibrate.data.metrics["calibration_cloud_only_accuracy"] == 1.0
        # Its label distribution's temperature was fitted there, and router.json keeps it with the
        # form the LLM obeyed and the few-shot examples it was shown: masked training messages.
        assert lineage["cloud_constraint"] == "json_schema" and lineage["cloud_examples_per_label"] == 1
        record = bundle.router_settings().calibration["cloud"]
        assert record["model"] == "stand-in-7b" and record["constraint"] == "json_schema"
        assert sorted(label for _, label in record["examples"]) == ["negative", "neutral", "positive"]
        shown = [f"Example:\n<message>\n{text}\n</message>\nLabel: {y}" for text, y in record["examples"]]
        assert any(all(example in prompt for example in shown) for prompt in asked)
        assert record["temperature"] > 0 and record["scored_answers"] > 0
        assert calibrate.data.metrics["cloud_temperature"] == pytest.approx(record["temperature"])
        assert {"cloud_ece_before", "cloud_ece_after"} <= set(calibrate.data.metrics)

    finally:
        llm.stop()
    # The key went in the Authorization header only: in no file the runs wrote.
    for path in [
        *(tmp_path / "work").rglob("*"),
        *Path(mlflow_uri.removeprefix("sqlite:///")).parent.rglob("*"),
    ]:
        if path.is_file():
            assert key.encode() not in path.read_bytes(), path


def test_a_bad_behaviour_cases_file_fails_the_flow_before_any_training(tmp_path, mlflow_uri):
    cases = tmp_path / "cases.csv"
    cases.write_text("text,label\nHello there,neutral\nI love it,happy\n", encoding="utf-8")
    overrides = [f"work_dir={tmp_path / 'work'}", f"behaviour.cases_path={cases}"]
    state = training_pipeline(preset="tiny", overrides=overrides, return_state=True)
    assert state.is_failed()
    with pytest.raises(DataValidationError, match=r"cases.csv: row 2, column 'label': 'happy' is not one of"):
        state.result()
    assert set(_task_states(state)) == {"clean-up-killed-runs", "prepare-data"}


def test_a_model_that_learned_a_shortcut_fails_the_behaviour_stage_and_registers_nothing(
    tmp_path, mlflow_uri
):
    """Data labelled by whether a message ends with an e-mail address, not by what it says: the
    model learns the address, scores well on its own test split and passes both gates, but an
    address added to a message changes its label, and the behavioural checks stop the run before
    the registry."""
    rows = [r for r in generate(600, seed=0) if "@" not in r["text"]]
    for i, row in enumerate(rows):
        if i % 2 == 0:
            row["text"] += f" You can reach me at customer{i}@example.net."
        row["label"] = "positive" if i % 2 == 0 else "negative"
    data = tmp_path / "shortcut.csv"
    pd.DataFrame(rows)[["text", "label"]].to_csv(data, index=False)
    overrides = [
        f"work_dir={tmp_path / 'work'}", f"data.path={data}", "dapt.enabled=false", "distill.enabled=false",
        "behaviour.max_failure_rate.invariance=0.3",
    ]  # fmt: skip
    state = training_pipeline(preset="tiny", overrides=overrides, return_state=True)
    assert state.is_failed()
    states = _task_states(state)
    assert states["system-gate"] == "Completed" and states["behaviour"] == "Failed"
    with pytest.raises(BehaviourFailed) as failed:
        state.result()
    report = str(failed.value)
    lines = report.splitlines()
    assert any(line.startswith("- edge.invariance ") and line.endswith("<= 0.3: FAIL") for line in lines)
    email = next(line for line in lines if line.startswith("| `invariance.email` |"))
    edge_rate = float(email.split("|")[2].split()[0])
    assert edge_rate > 0.3, report
    assert "<EMAIL_ADDRESS>" in report and "@example" not in report, "failed cases are shown masked"
    assert not (tmp_path / "work" / "bundles").exists()
    client = MlflowClient(mlflow_uri)
    assert client.search_registered_models() == []
    (run,) = client.search_runs(
        [client.get_experiment_by_name("edgeroute").experiment_id], "tags.mlflow.runName = 'behaviour'"
    )
    assert run.info.status == "FAILED" and run.data.metrics["passed"] == 0
    assert run.data.metrics["edge.invariance.email"] == pytest.approx(edge_rate, abs=1e-3)
