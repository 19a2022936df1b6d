"""prefect.yaml end to end: a Prefect server and a process worker on 127.0.0.1, the deployments
applied with `prefect deploy --all`, runs started with `prefect deployment run ... --watch`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.conftest import ROOT
from tests.services import Process, free_port, wait_until_healthy

pytestmark = pytest.mark.e2e
BIN = Path(sys.executable).parent
POOL = "edgeroute-process"


@dataclass
class Stack:
    env: dict[str, str]
    api_url: str
    mlflow_uri: str

    def prefect(self, *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(BIN / "prefect"), *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def run_deployment(self, name: str, parameters: dict) -> subprocess.CompletedProcess:
        return self.prefect(
            "deployment", "run", name, "--params", json.dumps(parameters), "--watch", timeout=600
        )


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """Server, pool, deployments and worker, as `make prefect-server deploy worker` start them."""
    home = tmp_path_factory.mktemp("prefect-e2e")
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    mlflow_uri = f"sqlite:///{home / 'mlflow' / 'mlflow.db'}"
    env = os.environ | {
        "PREFECT_HOME": str(home / "prefect"),
        "PREFECT_API_URL": api_url,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "MLFLOW_TRACKING_URI": mlflow_uri,
        "EDGEROUTE_HOME": str(ROOT),
    }
    env.pop("PREFECT_RESULTS_LOCAL_STORAGE_PATH", None)
    server = Process(
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env,
        home / "server.log",
    )
    worker = None
    try:
        wait_until_healthy(api_url, server)
        running = Stack(env, api_url, mlflow_uri)
        for args in (
            ("work-pool", "create", POOL, "--type", "process", "--overwrite"),
            ("--no-prompt", "deploy", "--all"),
        ):
            done = running.prefect(*args)
            assert done.returncode == 0, done.stdout + done.stderr
        worker = Process(
            [str(BIN / "prefect"), "worker", "start", "--pool", POOL, "--type", "process"],
            env,
            home / "worker.log",
        )
        yield running
    finally:
        for process in (worker, server):
            if process is not None:
                process.stop()


def test_the_deployments_of_prefect_yaml_are_applied_with_their_schedules(stack):
    done = stack.prefect("deployment", "inspect", "training-pipeline/nightly")
    assert done.returncode == 0, done.stderr
    assert "'cron': '0 2 * * *'" in done.stdout and "'preset': 'demo'" in done.stdout
    listed = stack.prefect("deployment", "ls")
    assert "training-pipeline/on-demand" in listed.stdout


def test_on_demand_runs_register_the_model_and_a_failed_gate_keeps_the_champion(stack, tmp_path):
    work = tmp_path / "work"
    first = stack.run_deployment(
        "training-pipeline/on-demand", {"preset": "tiny", "overrides": [f"work_dir={work}"]}
    )
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-2000:]
    assert "Flow run finished successfully in 'Completed'" in first.stdout
    client = MlflowClient(stack.mlflow_uri)
    aliases = client.get_registered_model("edgeroute").aliases
    assert aliases == {"challenger": aliases["champion"], "champion": aliases["champion"]}
    champion = str(aliases["champion"])

    failing = [f"work_dir={work}", "gate.min_accuracy_retention=1.5", "gate.max_attempts=1"]
    second = stack.run_deployment("training-pipeline/on-demand", {"preset": "tiny", "overrides": failing})
    assert second.returncode == 1, second.stdout[-3000:]
    assert "Flow run finished in state 'Failed'" in second.stdout
    assert len(client.search_model_versions("name='edgeroute'")) == 1
    assert str(client.get_model_version_by_alias("edgeroute", "champion").version) == champion
