"""Test kit: isolated Prefect and MLflow homes, one Prefect harness, a tiny BERT built on the fly."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

# Before anything imports Prefect: its home, results and settings stay inside a temp dir,
# and nothing phones home.
_PREFECT_HOME = Path(tempfile.mkdtemp(prefix="edgeroute-prefect-"))
os.environ["PREFECT_HOME"] = str(_PREFECT_HOME)
os.environ["PREFECT_RESULTS_LOCAL_STORAGE_PATH"] = str(_PREFECT_HOME / "results")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["PREFECT_LOGGING_TO_API_ENABLED"] = "false"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.pop("MLFLOW_TRACKING_URI", None)

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def prefect_harness():
    """One Prefect test server for the session (it takes seconds to start); yields its API URL."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
        yield PREFECT_API_URL.value()


class PostgresServer:
    """A real Postgres server on 127.0.0.1 (deployments/postgres.sh), stoppable and restartable."""

    def __init__(self) -> None:
        from tests.services import free_port

        # Under a folder the ``postgres`` user can reach: when the tests run as root, the server
        # runs as that user (Postgres refuses to run as root), and pytest's tmp_path is root's alone.
        self.home = Path(tempfile.mkdtemp(prefix="edgeroute-postgres-"))
        self.home.chmod(0o755)
        self.directory, self.port = self.home / "cluster", free_port()
        self.url = f"postgresql://edgeroute@127.0.0.1:{self.port}/postgres"

    def _script(self, *args: str) -> None:
        subprocess.run(
            [str(ROOT / "deployments" / "postgres.sh"), *args], check=True, capture_output=True, text=True,
            env=os.environ | {"PG_OPTIONS": "-c fsync=off"},  # a throwaway cluster: no need to sync
        )  # fmt: skip

    def start(self) -> None:
        self._script("start", str(self.directory), str(self.port))

    def stop(self) -> None:
        self._script("stop", str(self.directory))

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.home, ignore_errors=True)

    def database(self, name: str) -> str:
        """The URL of a new, empty database ``name`` on this server."""
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.url.rsplit("/", 1)[0] + f"/{name}"


@pytest.fixture(scope="session")
def postgres_server():
    """The session's one Postgres server."""
    server = PostgresServer()
    server.start()
    yield server
    server.remove()


@pytest.fixture
def postgres_url(postgres_server, request, monkeypatch) -> str:
    """A fresh database on the session's Postgres server for one test, and the fleet's audit key."""
    monkeypatch.setenv("EDGEROUTE_AUDIT_KEY", "a fleet's key for the tests")
    name = "t_" + hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:16]
    return postgres_server.database(name)


@pytest.fixture
def mlflow_uri(tmp_path, monkeypatch) -> str:
    """A fresh MLflow SQLite store for one test."""
    uri = f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


@pytest.fixture(scope="session")
def tiny_corpus() -> list[str]:
    from tasks.support.synthetic import generate

    return [row["text"] for row in generate(300, seed=0)]


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory, tiny_corpus) -> Path:
    """A 2-layer, hidden-32 BERT with a WordPiece vocabulary trained on the test corpus."""
    from tasks.support.base_model import build_tiny_bert

    return build_tiny_bert(tiny_corpus, tmp_path_factory.mktemp("models") / "tiny-bert")


@pytest.fixture(scope="session")
def tiny_prepared(tmp_path_factory):
    """The tiny preset's config and prepared data, shared by the model-stage tests."""
    from tasks.data import prepare_dataset
    from tasks.support.config import load_config

    config = load_config("tiny", [f"work_dir={tmp_path_factory.mktemp('work')}"])
    return config, prepare_dataset(config)[0]


@pytest.fixture(scope="session")
def tiny_classifier(tmp_path_factory, tiny_prepared, tiny_bert) -> Path:
    """A sequence classifier fine-tuned from the tiny BERT (no DAPT), as a HF checkpoint."""
    from tasks.classifier import fine_tune

    config, data = tiny_prepared
    output = tmp_path_factory.mktemp("classifier")
    fine_tune(config, data, str(tiny_bert), output, None)
    return output


@pytest.fixture(scope="session")
def tiny_student(tmp_path_factory, tiny_prepared, tiny_classifier) -> Path:
    """A 1-layer student distilled from the 2-layer tiny classifier, as a HF checkpoint."""
    from tasks.distill import distill

    config, data = tiny_prepared
    output = tmp_path_factory.mktemp("student")
    distill(config, data, str(tiny_classifier), output, None)
    return output


@pytest.fixture(scope="session")
def tiny_compressed(tmp_path_factory, tiny_prepared, tiny_classifier):
    """The tiny classifier exported, fused and quantized with the default recipe (static INT8)."""
    from tasks.compress import compress

    config, data = tiny_prepared
    corpus = data.frame("train")["text"].tolist()
    return compress(
        tiny_classifier,
        corpus,
        config.compress,
        tmp_path_factory.mktemp("compress"),
        calibration_texts=data.frame("calibration")["text"].tolist(),
        max_length=config.model.max_length,
    )


@pytest.fixture(scope="session")
def tiny_calibration(tmp_path_factory, tiny_prepared, tiny_compressed):
    """The router calibrated on the tiny calibration split (INT8 edge, FP32 local cloud)."""
    from tasks.calibrate import calibrate, edge_and_cloud

    config, data = tiny_prepared
    variants = tiny_compressed.variants
    edge, cloud = edge_and_cloud(variants["int8"], variants["fp32"], data.labels, config.model.max_length)
    directory = tmp_path_factory.mktemp("calibrate")
    return calibrate(edge, cloud, data.frame("calibration"), config.router, directory)


PROFILE_SEED = 7


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory, tiny_prepared, tiny_compressed, tiny_calibration) -> Path:
    """A calibrated bundle of the tiny model: INT8 edge, FP32 cloud, router.json, and a reference
    profile of 1,000 generated messages (the tiny validation split is too small to profile)."""
    from edgeroute.bundle import CLOUD_MODEL, EDGE_MODEL, PROFILE, ROUTER, TOKENIZER, write_bundle
    from edgeroute.drift import reference_profile
    from edgeroute.router import Router, RouterSettings
    from tasks.calibrate import edge_and_cloud
    from tasks.support.synthetic import generate

    config, data = tiny_prepared
    int8, fp32 = tiny_compressed.variants["int8"], tiny_compressed.variants["fp32"]
    edge, _ = edge_and_cloud(int8, fp32, data.labels, config.model.max_length)
    router = Router(edge, None, RouterSettings.load(tiny_calibration.router_json))
    profile = tmp_path_factory.mktemp("profile") / PROFILE
    reference = [row["text"] for row in generate(1000, seed=PROFILE_SEED)]
    profile.write_text(reference_profile(router, reference).to_json())
    files = {
        EDGE_MODEL: int8.model,
        CLOUD_MODEL: fp32.model,
        TOKENIZER: int8.tokenizer,
        ROUTER: tiny_calibration.router_json,
        PROFILE: profile,
    }
    return write_bundle(
        tmp_path_factory.mktemp("bundles") / "tiny",
        files,
        labels=data.labels,
        max_length=64,
        metrics={"router": tiny_calibration.metrics},
        lineage={"data_digest": data.digest, "batch_independent": tiny_compressed.recipe.batch_independent},
    )


@pytest.fixture(scope="session")
def escalating_bundle(tmp_path_factory, tiny_bundle) -> Path:
    """The tiny bundle with a router that sends every query to the cloud."""
    from dataclasses import replace

    from edgeroute.bundle import ROUTER, derive_bundle, load_bundle

    bundle = load_bundle(tiny_bundle)
    directory = tmp_path_factory.mktemp("escalating")
    router_json = directory / "router.json"
    router_json.write_text(replace(bundle.router_settings(), min_confidence=1.0).to_json())
    return derive_bundle(bundle, directory / "bundle", replace={ROUTER: router_json}, metrics={}, lineage={})
