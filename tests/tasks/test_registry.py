"""The registry on a real MLflow store: pyfunc bundle, aliases, promotion, rollback, the CLI."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient

from edgeroute.bundle import ROUTER, BundleError, derive_bundle, load_bundle
from edgeroute.router import RouterSettings
from tasks import registry
from tasks.model_card import DESCRIPTION_LIMIT, model_card
from tasks.registry import CanaryRule
from tasks.support import tracking
from tasks.support.config import PromotionConfig

NAME = "edgeroute-test"


@pytest.fixture
def parent_run(mlflow_uri):
    with tracking.pipeline_run("registry-test", "parent") as run_id:
        yield run_id


def variant_bundle(tiny_bundle: Path, tmp_path: Path, **settings) -> Path:
    """A copy of the tiny bundle with other router settings (and so another manifest)."""
    bundle = load_bundle(tiny_bundle)
    tmp_path.mkdir(parents=True, exist_ok=True)
    router_json = tmp_path / "router.json"
    router_json.write_text(replace(bundle.router_settings(), **settings).to_json())
    return derive_bundle(bundle, tmp_path / "variant", replace={ROUTER: router_json}, metrics={}, lineage={})


def test_a_registered_bundle_is_a_pyfunc_model_with_lineage(tiny_bundle, parent_run, mlflow_uri):
    registered = registry.register_bundle(tiny_bundle, NAME, ["where is my parcel", "thanks!"])
    client = MlflowClient(mlflow_uri)
    version = client.get_model_version_by_alias(NAME, "challenger")
    assert str(version.version) == registered.version == "1"
    assert version.tags["lineage.data_digest"] == load_bundle(tiny_bundle).manifest["lineage"]["data_digest"]

    model = mlflow.pyfunc.load_model(f"models:/{NAME}@challenger")
    inputs = [field.name for field in model.metadata.get_input_schema().inputs]
    outputs = [field.name for field in model.metadata.get_output_schema().inputs]
    assert inputs == ["text"] and outputs == ["label", "confidence", "route", "reason", "cost"]
    predicted = model.predict(pd.DataFrame({"text": ["where is my parcel", "Zqxjkv wvbnmq"]}))
    expected = load_bundle(tiny_bundle).router().route(["where is my parcel", "Zqxjkv wvbnmq"])
    assert predicted["label"].tolist() == [d.label for d in expected]
    assert predicted["reason"].tolist() == [d.reason for d in expected]

    downloaded = registry.download_bundle(f"models:/{NAME}/1")
    assert json.loads((downloaded / "manifest.json").read_text()) == load_bundle(tiny_bundle).manifest


def test_promotion_first_champion_then_only_if_not_worse(tiny_bundle, tiny_prepared, tmp_path, parent_run):
    _, data = tiny_prepared
    by_edge_share = PromotionConfig(metric="edge_share", tolerance=0.0)
    # The tiny calibration split is too small for the router to certify any edge share: a champion
    # that answers the simpler texts on the edge, whatever their confidence.
    some = variant_bundle(tiny_bundle, tmp_path / "some", min_confidence=0.0, max_complexity=0.5)
    first = registry.register_bundle(some, NAME, ["hi"])
    assert registry.decide(NAME, first, data, by_edge_share, parent_run)["promoted"]

    # Everything to the cloud: edge share 0, far worse on the configured metric.
    timid = variant_bundle(tiny_bundle, tmp_path, min_confidence=1.0)
    second = registry.register_bundle(timid, NAME, ["hi"])
    decision = registry.decide(NAME, second, data, by_edge_share, parent_run)
    assert not decision["promoted"]
    assert decision["scores"]["challenger"] < decision["scores"]["champion"]
    assert str(registry.version_by_alias(NAME, "champion").version) == first.version
    assert str(registry.version_by_alias(NAME, "challenger").version) == second.version
    run = MlflowClient().get_run(parent_run)
    assert run.data.metrics["champion_edge_share"] == decision["scores"]["champion"]

    # Everything on the edge: the highest edge share there is, so it is promoted.
    bold = variant_bundle(tiny_bundle, tmp_path / "bold", min_confidence=0.0, max_complexity=1.0)
    third = registry.register_bundle(bold, NAME, ["hi"])
    assert registry.decide(NAME, third, data, by_edge_share, parent_run)["promoted"]
    champion = registry.version_by_alias(NAME, "champion")
    assert str(champion.version) == third.version and champion.tags["previous_champion"] == first.version


def test_promotion_also_judges_on_the_production_holdout(tiny_bundle, tiny_prepared, tmp_path, parent_run):
    _, data = tiny_prepared
    by_edge_share = PromotionConfig(metric="edge_share", tolerance=0.0)
    everything = {"min_confidence": 0.0, "max_complexity": 1.0}
    bold = variant_bundle(tiny_bundle, tmp_path / "bold", **everything, max_unfamiliar_share=1.0)
    registry.decide(NAME, registry.register_bundle(bold, NAME, ["hi"]), data, by_edge_share, parent_run)
    # The same on the test split; on unfamiliar production traffic it escalates everything.
    wary = variant_bundle(tiny_bundle, tmp_path / "wary", **everything, max_unfamiliar_share=0.5)
    second = registry.register_bundle(wary, NAME, ["hi"])
    shutil.copytree(data.directory, tmp_path / "data")
    production = replace(data, directory=tmp_path / "data")
    gibberish = ["Zqxjkv wvbnmq", "Xqwv zzkt pflrm", "Qqqz vvkx jjwp"]
    pd.DataFrame({"text": gibberish, "label": data.labels[0]}).to_parquet(
        production.path("production_holdout")
    )

    decision = registry.decide(NAME, second, production, by_edge_share, parent_run)
    assert decision["scores"] == {"champion": 1.0, "challenger": 1.0}
    assert decision["production_holdout_scores"] == {"champion": 1.0, "challenger": 0.0}
    assert (
        not decision["promoted"]
        and f"on the production holdout of {production.directory}" in decision["reason"]
    )
    assert MlflowClient().get_run(parent_run).data.metrics["challenger_production_holdout_edge_share"] == 0.0
    assert registry.decide(NAME, second, data, by_edge_share, parent_run)["promoted"], (
        "judged on the test split"
    )


def test_promote_and_rollback_from_the_command_line(tiny_bundle, parent_run, mlflow_uri, tmp_path):
    for _ in range(2):
        registry.register_bundle(tiny_bundle, NAME, ["hi"])
    edgeroute = str(Path(sys.executable).parent / "edgeroute")
    env = os.environ | {"MLFLOW_TRACKING_URI": mlflow_uri}

    def run(*args):
        return subprocess.run([edgeroute, *args], env=env, capture_output=True, text=True, timeout=120)

    assert run("promote", "1", "--name", NAME).returncode == 0
    done = run("promote", "2", "--name", NAME)
    assert done.returncode == 0 and "champion is now version 2 (was 1)" in done.stdout
    missing = run("promote", "9", "--name", NAME)
    assert missing.returncode == 1 and "has no version 9" in missing.stderr

    classified = run("classify", "--model", f"models:/{NAME}@champion", "--json", "where is my parcel")
    assert classified.returncode == 0, classified.stderr
    assert json.loads(classified.stdout)["label"] in {"negative", "neutral", "positive"}

    back = run("rollback", "--name", NAME)
    assert back.returncode == 0 and "champion is now version 1 (rolled back from 2)" in back.stdout
    assert str(registry.version_by_alias(NAME, "champion").version) == "1"
    again = run("rollback", "--name", NAME)
    assert again.returncode == 1 and "was the first champion; nothing to roll back to" in again.stderr


def test_an_altered_bundle_is_never_registered(tiny_bundle, tmp_path, parent_run, mlflow_uri):
    broken = shutil.copytree(tiny_bundle, tmp_path / "broken")
    (broken / ROUTER).write_text(RouterSettings(min_confidence=0.1).to_json())
    with pytest.raises(BundleError, match=r"router\.json does not match its sha256"):
        registry.register_bundle(broken, NAME, ["hi"])
    assert MlflowClient(mlflow_uri).search_registered_models() == []


def test_the_registered_model_escalates_to_an_llm_given_in_its_model_config(tiny_bundle, parent_run):
    from tests.services import OpenAIStandIn

    registry.register_bundle(tiny_bundle, NAME, ["where is my parcel"])
    llm = OpenAIStandIn()
    try:
        model = mlflow.pyfunc.load_model(
            f"models:/{NAME}@challenger",
            model_config={
                "cloud": {"backend": "openai", "url": llm.url, "model": "m"},
                "min_confidence": 1.0,
            },
        )
        predicted = model.predict(pd.DataFrame({"text": ["I want a refund", "thanks, great help"]}))
    finally:
        llm.stop()
    assert predicted["route"].tolist() == ["cloud", "cloud"] and len(llm.requests) == 2
    assert predicted["label"].tolist() == ["negative", "positive"]


def test_an_unsigned_registered_bundle_is_refused_by_name_once_a_public_key_is_set(
    tiny_bundle, parent_run, tmp_path
):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    registry.register_bundle(tiny_bundle, NAME, ["where is my parcel"])
    public = tmp_path / "signing.pub"
    public.write_bytes(
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    done = subprocess.run(
        [
            str(Path(sys.executable).parent / "edgeroute"),
            "classify",
            "--model",
            f"models:/{NAME}@challenger",
            "hi",
        ],
        env=os.environ | {"EDGEROUTE_BUNDLE_PUBLIC_KEY": str(public)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2, done.stderr
    assert f"error: --model models:/{NAME}@challenger:" in done.stderr and "not signed" in done.stderr
    assert "Traceback" not in done.stderr


def carded_bundle(tiny_bundle: Path, tmp_path: Path, data) -> Path:
    """The tiny bundle with the metrics and lineage a training run writes (figures made up, each
    one distinct so the card can be searched for it)."""
    metrics = {
        "edge": {"accuracy": 0.8123, "macro_f1": 0.8011, "p95_ms": 1.25, "size_mb": 0.1},
        "cloud": {"accuracy": 0.8345, "macro_f1": 0.8222, "p95_ms": 4.5, "size_mb": 0.3},
        "compress": {"int8_size_mb": 0.1, "size_reduction_vs_cloud_pct": 66.7, "quantized_ops": 14},
        "router": load_bundle(tiny_bundle).manifest["metrics"]["router"]
        | {"test_accuracy": 0.8567, "test_cloud_only_accuracy": 0.8345, "test_edge_share": 0.625},
        "behaviour": {"edge.invariance": 0.0612, "system.invariance": 0.0311, "passed": 1.0},
    }
    lineage = {
        "data_dir": str(data.directory),
        "edge_model": "student",
        "student_layers": 1,
        "quantization_recipe": "primary",
        "base_model": "tiny",
        "git_commit": "0123abc",
        "mlflow_run_id": "",
    }
    return derive_bundle(
        load_bundle(tiny_bundle), tmp_path / "carded", replace={}, metrics=metrics, lineage=lineage
    )


def test_every_registered_version_has_a_model_card(
    tiny_bundle, tiny_prepared, tmp_path, parent_run, mlflow_uri
):
    _, data = tiny_prepared
    # What the gate stages of the pipeline run measured and required, as they log it.
    client = MlflowClient(mlflow_uri)
    with tracking.stage_run(parent_run, "gate") as gate_run:
        tracking.log_params(gate_run, {"min_accuracy_retention": 0.985, "max_size_mb": None})
        tracking.log_metrics(gate_run, {"accuracy_retention": 0.9937})

    registered = registry.register_bundle(carded_bundle(tiny_bundle, tmp_path, data), NAME, ["hi"])
    card = client.get_model_version(NAME, registered.version).description

    assert "| accuracy | 0.8123 | 0.8345 | 0.8567 |" in card  # edge INT8, cloud FP32, routed system
    assert "| accuracy retention (edge INT8 / its FP32) | 0.9937 | ≥ 0.985 |" in card
    assert "| system retention (routed / cloud only) | 1.0266 | — |" in card
    assert "- **edge share (test)**: 62.5 %" in card
    assert "### Intended use" in card and "customer-support messages" in card
    assert f"- **source**: `{data.source}`" in card and f"`{data.digest}`" in card
    assert f"test {data.split_counts['test']:,}" in card
    for label in data.labels:
        share = f"{100 * data.class_counts[label] / sum(data.class_counts.values()):.1f} %"
        assert f"| `{label}` | {data.class_counts[label]:,} | {share} |" in card
    assert "a 1-layer student" in card and "recipe `primary`" in card and "`0123abc`" in card
    assert "| invariance | 0.061 | — | 0.031 |" in card and "behaviour gate passed" in card
    assert "calibration**: target `" in card  # the router's calibration target, from router.json
    assert "None" not in card and not re.search(r"\bnan\b", card, re.IGNORECASE)
    # The whole card is beside the model, in the register run.
    assert client.download_artifacts(registered.run_id, "model_card.md", str(tmp_path)).endswith(
        "model_card.md"
    )
    assert (tmp_path / "model_card.md").read_text() == card


def test_the_card_of_a_sparse_manifest_leaves_out_what_it_lacks(tiny_bundle):
    """The tiny bundle has calibration metrics only (no test figures), no data, no gate figures."""
    bundle = load_bundle(tiny_bundle)
    card = model_card(bundle, None)
    assert f"- **digest**: `{bundle.manifest['lineage']['data_digest']}`" in card
    assert "**Labels** (3):\n`negative`, `neutral`, `positive`" in card
    assert "- **thresholds**: min confidence " in card and "### Limits" in card
    for absent in ("None", "### Test metrics", "### Gates", "### Provenance", "Behavioural", "source"):
        assert absent not in card, absent
    assert not re.search(r"\bnan\b", card, re.IGNORECASE)


def test_a_long_label_list_is_cut_to_fit_the_description(tiny_bundle, tiny_prepared):
    _, data = tiny_prepared
    labels = [f"intent_number_{i:03d}_with_a_long_name" for i in range(300)]
    bundle = load_bundle(tiny_bundle)
    bundle = replace(bundle, manifest=bundle.manifest | {"labels": labels})
    many = replace(data, labels=labels, class_counts={label: 10 + i for i, label in enumerate(labels)})
    card = model_card(bundle, many)
    assert len(card) <= DESCRIPTION_LIMIT
    assert "`intent_number_299_with_a_long_name` 0.6 %" in card  # the largest first
    assert "… and " in card and "`intent_number_000_with_a_long_name`" not in card
    assert "### Limits" in card  # the labels were cut, not the sections after them
    assert "`intent_number_000_with_a_long_name`" in model_card(bundle, many, limit=None)


def test_experiments_are_tagged_for_model_development(parent_run, mlflow_uri):
    client = MlflowClient(mlflow_uri)
    assert (
        client.get_experiment_by_name("registry-test").tags["mlflow.experimentKind"]
        == "custom_model_development"
    )
    # An experiment made before the tag gets it on first use; a kind chosen by hand stays.
    old = client.create_experiment("made-before")
    chosen = client.create_experiment("chosen", tags={"mlflow.experimentKind": "genai_development"})
    assert "mlflow.experimentKind" not in client.get_experiment(old).tags
    assert tracking.experiment_id("made-before") == old and tracking.experiment_id("chosen") == chosen
    assert client.get_experiment(old).tags["mlflow.experimentKind"] == "custom_model_development"
    assert client.get_experiment(chosen).tags["mlflow.experimentKind"] == "genai_development"


def health(
    champion_stats: dict | None, canary_stats: dict | None, canary: str | None = "edgeroute/4"
) -> dict:
    """A health report as a service serving champion edgeroute/3 and (or not) a canary gives it."""
    versions = {"edgeroute/3": champion_stats} | ({canary: canary_stats} if canary and canary_stats else {})
    return {
        "model_version": "edgeroute/3",
        "canary": {"model_version": canary, "share": 0.05} if canary else None,
        "versions": versions,
        "window_s": 3600.0,
    }


def stats(labelled: int, accuracy: float | None, sources: dict[str, int] | None = None) -> dict:
    """A version's window metrics, its labels from two feedback sources in equal parts unless
    ``sources`` says otherwise."""
    sources = {"helpdesk": labelled // 2, "crm": labelled - labelled // 2} if sources is None else sources
    return {"requests": 10 * labelled, "labelled": labelled, "accuracy": accuracy, "edge_share": 0.9,
            "feedback_sources": sources}  # fmt: skip


RULE = CanaryRule(min_feedback=200, tolerance=0.01)


def test_a_canary_is_promoted_on_enough_live_feedback_when_not_worse():
    promoted, reason = registry.canary_verdict(health(stats(900, 0.90), stats(250, 0.93)), RULE)
    assert promoted and "canary edgeroute/4 0.9300 (250 labelled) >= champion edgeroute/3 0.9000" in reason
    # Within the tolerance, to the float.
    assert registry.canary_verdict(health(stats(900, 0.91), stats(250, 0.90)), RULE)[0]

    promoted, reason = registry.canary_verdict(health(stats(900, 0.91), stats(250, 0.8999)), RULE)
    assert not promoted and "0.8999 (250 labelled) < champion edgeroute/3 0.9100" in reason


def test_a_canary_is_not_promoted_without_enough_feedback():
    promoted, reason = registry.canary_verdict(health(stats(900, 0.90), stats(150, 0.99)), RULE)
    assert not promoted
    assert reason == "not enough feedback yet over the last 3600 s (canary edgeroute/4 150 of 200 labelled)"
    promoted, reason = registry.canary_verdict(health(stats(50, 0.5), stats(300, None)), RULE)
    assert not promoted and "canary edgeroute/4 300 of 200 labelled, no accuracy" in reason
    assert "champion edgeroute/3 50 of 200 labelled" in reason
    # No canary figures at all yet, or no canary.
    assert "canary edgeroute/4 0 of 200" in registry.canary_verdict(health(stats(900, 0.9), None))[1]
    assert registry.canary_verdict(health(stats(900, 0.9), None, canary=None)) == (
        False,
        "the service serves no canary (champion edgeroute/3)",
    )


def test_a_fleets_canary_is_judged_on_the_feedback_every_replica_recorded(tmp_path):
    from edgeroute.audit import AuditLog
    from edgeroute.monitor import fleet_report
    from edgeroute.trails import window

    trail = AuditLog(tmp_path / "audit.db")
    now = time.time()
    rows = [
        {"request_id": f"r{i}", "time": now - 60 + i / 10, "model_version": f"edgeroute/{1 + (i % 4 == 0)}",
         "route": "edge", "reason": "confident", "label": "neutral", "confidence": 0.9, "complexity": 0.1,
         "cost": 0.001, "text": f"where is my parcel {i}"}
        for i in range(400)
    ]  # fmt: skip
    trail.record(rows)
    for i, row in enumerate(
        rows
    ):  # the canary (every 4th request) always right; the champion wrong 40 in 300
        wrong = i % 10 == 1
        trail.feedback(row["request_id"], "negative" if wrong else "neutral", ("helpdesk", "crm")[i // 4 % 2])
    trail.close()
    report = fleet_report(window(tmp_path / "audit.db", now - 3600, 10_000), champion="edgeroute/1")
    assert report["canary"] == {"model_version": "edgeroute/2", "share": 0.25}
    assert report["versions"]["edgeroute/2"]["feedback_sources"] == {"crm": 50, "helpdesk": 50}
    promoted, verdict = registry.canary_verdict(report, CanaryRule(min_feedback=100))
    assert promoted, verdict
    assert "canary edgeroute/2 1.0000 (100 labelled) >= champion edgeroute/1 0.8667 (300 labelled)" in verdict


def test_feedback_from_one_source_does_not_decide_a_promotion():
    # The outside pass: one key's 500 feedback posts made a canary champion.
    promoted, reason = registry.canary_verdict(health(stats(900, 0.90), stats(500, 1.0, {"api": 500})), RULE)
    assert not promoted
    assert reason == (
        "feedback from too few sources over the last 3600 s (canary edgeroute/4 from 1 (api 500)): "
        "promotion needs feedback from 2 sources or more, none with over 80% of a version's labels"
    )
    # A second source that gave a token share does not make it many.
    lopsided = stats(500, 1.0, {"api": 490, "helpdesk": 10})
    promoted, reason = registry.canary_verdict(health(stats(900, 0.90), lopsided), RULE)
    assert not promoted and "canary edgeroute/4 from 2 (api 490, helpdesk 10)" in reason
    # The champion's labels count alike: one key could sink it as well as lift the canary.
    promoted, reason = registry.canary_verdict(health(stats(900, 0.5, {"api": 900}), stats(500, 0.9)), RULE)
    assert not promoted and "champion edgeroute/3 from 1 (api 900)" in reason
    # A service older than sources reports none: nothing to judge them by.
    older = {k: v for k, v in stats(500, 1.0).items() if k != "feedback_sources"}
    assert "canary edgeroute/4 from 0 ()" in registry.canary_verdict(health(stats(900, 0.9), older), RULE)[1]
    # An operator who trusts one source says so.
    trusting = CanaryRule(min_feedback=200, min_sources=1, max_source_share=1.0)
    assert registry.canary_verdict(health(stats(900, 0.90), stats(500, 1.0, {"api": 500})), trusting)[0]


def test_one_key_posting_feedback_on_every_answer_cannot_promote_its_canary(
    tiny_bundle, escalating_bundle, tmp_path
):
    import httpx

    from edgeroute.access import Access
    from tests.services import edge_service, wrong_label

    keys = {"helpdesk": "helpdesk-key-1", "crm": "crm-key-12"}
    running, audit = edge_service(
        tiny_bundle, tmp_path, None, None, "canary_share=0.5", "feedback.max_per_minute=1000",
        access=Access("classify-key", keys), version="edgeroute/3", canary=(escalating_bundle, "edgeroute/1"),
    )  # fmt: skip
    texts = [f"my parcel {i} has not arrived" for i in range(25)]

    def attack(keyed_by) -> dict:
        """20 requests of 25 texts, feedback on every answer: the canary's right, the champion's wrong."""
        for n in range(20):
            results = httpx.post(
                f"{running.url}/v1/classify", json={"texts": texts}, headers={"X-API-Key": "classify-key"}
            ).json()["results"]
            for i, r in enumerate(results):
                label = r["label"] if r["model_version"] == "edgeroute/1" else wrong_label(r["label"])
                posted = httpx.post(
                    f"{running.url}/v1/feedback", json={"request_id": r["request_id"], "label": label},
                    headers={"X-API-Key": keys[keyed_by(n * 25 + i)]},
                )  # fmt: skip
                assert posted.status_code == 200, posted.text
        return httpx.get(f"{running.url}/v1/health", headers={"X-API-Key": "classify-key"}).json()

    try:
        report = attack(lambda i: "helpdesk")
        assert report["versions"]["edgeroute/1"]["feedback_sources"] == {
            "helpdesk": report["versions"]["edgeroute/1"]["labelled"]
        }
        promoted, verdict = registry.canary_verdict(report, CanaryRule(min_feedback=100))
        assert not promoted and "feedback from too few sources" in verdict and "(helpdesk " in verdict
        # The same feedback from two sources in equal parts decides.
        report = attack(lambda i: ("helpdesk", "crm")[i % 2])
        promoted, verdict = registry.canary_verdict(report, CanaryRule(min_feedback=100))
        assert promoted, verdict
    finally:
        running.stop()
        audit.close()
