"""Recovery of the training pipeline, with real processes: `edgeroute train` killed with SIGKILL
after a stage finished, then a real `mlflow server` stopped mid-run. Each time the run stops
with nothing registered, and the next run takes the finished stages from the cache; once the
tracking server is back, it completes.

One scenario in three runs sharing a work directory, on the tiny preset made smaller still:
recovery, not accuracy, is under test.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from mlflow import MlflowClient
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowFilter, FlowFilterName

from tests.services import MlflowServer, Process, task_states

BIN = Path(sys.executable).parent
SMALL = [
    "data.n_samples=200",
    "classifier.head_epochs=0",
    "classifier.epochs=2",
    "evaluate.latency_queries=20",
    "evaluate.warmup=0",
    "gate.min_accuracy_retention=0.5",
    "gate.min_macro_f1_retention=null",
    "gate.max_attempts=1",
]


@pytest.fixture
def mlflow_server(tmp_path):
    server = MlflowServer(tmp_path / "mlflow")
    server.root.mkdir()
    server.start()
    yield server
    server.kill()


def _train(tmp_path: Path, api_url: str, tracking_url: str, name: str) -> Process:
    env = os.environ | {
        "PREFECT_API_URL": api_url,
        "MLFLOW_TRACKING_URI": tracking_url,
        # Fail fast when the server is gone: MLflow's default retries for minutes.
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    }
    overrides = [arg for o in [f"work_dir={tmp_path / 'work'}", *SMALL] for arg in ("--set", o)]
    command = [str(BIN / "edgeroute"), "train", "--preset", "tiny", *overrides]
    return Process(command, env, tmp_path / f"{name}.log", tmp_path)


def _flow_runs() -> set:
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["training-pipeline"])), limit=200
        )
    return {run.id for run in runs}


def _wait(condition: Callable[[], object], process: Process, what: str, timeout_s: float = 300) -> object:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if value := condition():
            return value
        if process.popen.poll() is not None:
            raise AssertionError(f"{what}: training exited first:\n{process.log.read_text()[-3000:]}")
        time.sleep(0.2)
    raise TimeoutError(f"{what}: not within {timeout_s} s")


def _started(process: Process, known: set):
    """The flow run that ``process`` started (one not in ``known``)."""
    return _wait(lambda: next(iter(_flow_runs() - known), None), process, "flow run started")


def _finish(process: Process, timeout_s: float = 300) -> tuple[int, str]:
    process.popen.wait(timeout=timeout_s)
    return process.popen.returncode, process.log.read_text()


def test_a_killed_run_and_an_mlflow_outage_both_resume_from_the_cache(
    tmp_path, prefect_harness, mlflow_server
):
    registry = MlflowClient(mlflow_server.url)
    work = tmp_path / "work"

    # 1. Killed with SIGKILL once DAPT has finished and the classifier has begun writing its
    #    checkpoint: no bundle, nothing registered.
    checkpoints = work / "checkpoints"
    known = _flow_runs()
    killed = _train(tmp_path, prefect_harness, mlflow_server.url, "killed")
    run = _started(killed, known)
    _wait(lambda: task_states(run).get("domain-adapt") == "Completed", killed, "DAPT finished")
    _wait(lambda: list(checkpoints.glob(".classifier-*")), killed, "classifier staging directory")
    os.killpg(killed.popen.pid, signal.SIGKILL)
    assert _finish(killed)[0] == -signal.SIGKILL
    assert not (work / "bundles").exists()
    assert registry.search_model_versions() == []
    # A killed process leaves its staging directory (hidden, never read as a checkpoint), and
    # its MLflow run RUNNING.
    staging = set(checkpoints.glob(".*"))

    # 2. The re-run takes DAPT from the cache; the MLflow server goes away while the classifier
    #    trains: the run fails, saying so, and registers nothing.
    known = _flow_runs()
    outage = _train(tmp_path, prefect_harness, mlflow_server.url, "outage")
    run = _started(outage, known)
    _wait(lambda: task_states(run).get("train-classifier") == "Running", outage, "classifier training")
    assert task_states(run)["domain-adapt"] == "Cached"
    mlflow_server.kill()
    code, log = _finish(outage)
    assert code == 1, log[-3000:]
    # The command's last word is the reason (above it, Prefect's log of the failed task).
    assert log.splitlines()[-1].startswith(f"error: MLflow tracking at {mlflow_server.url} failed: API")
    assert not (work / "bundles").exists()
    # No classifier checkpoint and no staging directory: the re-run removed the killed run's
    # (it held the key's lock), and a failing stage cleans up after itself.
    assert staging and not list(checkpoints.glob("classifier-*")) and list(checkpoints.glob(".*")) == []

    # 3. With the server back, the same command resumes from the cached stages and completes.
    mlflow_server.start()
    assert registry.search_model_versions() == []
    known = _flow_runs()
    resumed = _train(tmp_path, prefect_harness, mlflow_server.url, "resumed")
    run = _started(resumed, known)
    code, log = _finish(resumed)
    assert code == 0, log[-3000:]
    states = task_states(run)
    assert states["domain-adapt"] == "Cached" and states["train-classifier"] == "Completed"
    (version,) = registry.search_model_versions()
    assert registry.get_model_version_by_alias("edgeroute", "champion").version == version.version
    assert len(list((work / "bundles").iterdir())) == 1
    # The killed run's and the outage's MLflow runs were left RUNNING; the next runs failed them.
    experiment = registry.get_experiment_by_name("edgeroute").experiment_id
    assert registry.search_runs([experiment], "attributes.status = 'RUNNING'") == []
    assert len(registry.search_runs([experiment], "attributes.status = 'FAILED'")) >= 2
