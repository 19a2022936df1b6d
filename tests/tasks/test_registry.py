"""The registry on a real MLflow store: pyfunc bundle, aliases, promotion, rollback, the CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient

from edgeroute.bundle import ROUTER, BundleError, derive_bundle, load_bundle
from edgeroute.router import RouterSettings
from tasks import registry
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
