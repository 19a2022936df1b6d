"""prefect.yaml end to end, on the stack `make stack` starts: a Prefect server and an MLflow
tracking server on a real Postgres, and a process worker, on 127.0.0.1; the deployments applied
with `prefect deploy --all`, runs started with `prefect deployment run ... --watch`, the champion
they register served by two replicas writing one Postgres trail, and the deployment trigger of
training-pipeline/retrain-from-production acting on the monitor's events."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from mlflow import MlflowClient
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
from prefect.client.schemas.objects import StateType
from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.states import Cancelled

from edgeroute.trails import window
from tasks.monitoring import DEGRADED, GROUP_LABEL
from tests.conftest import ROOT, PostgresServer
from tests.services import Process, degrade, edge_service, free_port, wait_ready, wait_until_healthy

pytestmark = pytest.mark.e2e
BIN = Path(sys.executable).parent
POOL = "edgeroute-process"


@dataclass
class Stack:
    env: dict[str, str]
    api_url: str
    mlflow_uri: str
    postgres: PostgresServer

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
def stack(tmp_path_factory, postgres_server):
    """Servers on Postgres, pool, deployments and worker, as `make stack` starts them."""
    home = tmp_path_factory.mktemp("prefect-e2e")
    port, mlflow_port = free_port(), free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    mlflow_uri = f"http://127.0.0.1:{mlflow_port}"
    database = postgres_server.database("e2e_mlflow").replace("postgresql://", "postgresql+psycopg://")
    env = os.environ | {
        "PREFECT_HOME": str(home / "prefect"),
        "PREFECT_API_URL": api_url,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "MLFLOW_TRACKING_URI": mlflow_uri,
        "EDGEROUTE_HOME": str(ROOT),
    }
    env.pop("PREFECT_RESULTS_LOCAL_STORAGE_PATH", None)
    prefect_database = postgres_server.database("e2e_prefect").replace(
        "postgresql://", "postgresql+asyncpg://"
    )
    server = Process(
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env | {"PREFECT_API_DATABASE_CONNECTION_URL": prefect_database},
        home / "server.log",
    )
    tracking = Process(
        [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(mlflow_port),
         "--backend-store-uri", database, "--artifacts-destination", str(home / "mlflow-artifacts")],
        env | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        home / "mlflow.log",
    )  # fmt: skip
    worker = None
    try:
        wait_until_healthy(api_url, server)
        wait_until_healthy(mlflow_uri, tracking)
        running = Stack(env, api_url, mlflow_uri, postgres_server)
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
        for process in (worker, server, tracking):
            if process is not None:
                process.stop()


def test_the_deployments_of_prefect_yaml_are_applied_with_their_schedules(stack):
    done = stack.prefect("deployment", "inspect", "training-pipeline/nightly")
    assert done.returncode == 0, done.stderr
    assert "'cron': '0 2 * * *'" in done.stdout and "'preset': 'demo'" in done.stdout
    listed = stack.prefect("deployment", "ls")
    assert "training-pipeline/on-demand" in listed.stdout
    weekly = stack.prefect("deployment", "inspect", "training-pipeline/retrain-from-production")
    assert weekly.returncode == 0, weekly.stderr
    assert (
        "'cron': '0 3 * * 1'" in weekly.stdout
        and "'production_trail': 'work/audit/audit.db'" in weekly.stdout
    )


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
    serves_from_both_replicas(stack, f"edgeroute/{champion}", tmp_path)

    failing = [f"work_dir={work}", "gate.min_accuracy_retention=1.5", "gate.max_attempts=1"]
    second = stack.run_deployment("training-pipeline/on-demand", {"preset": "tiny", "overrides": failing})
    assert second.returncode == 1, second.stdout[-3000:]
    assert "Flow run finished in state 'Failed'" in second.stdout
    assert len(client.search_model_versions("name='edgeroute'")) == 1
    assert str(client.get_model_version_by_alias("edgeroute", "champion").version) == champion


def serves_from_both_replicas(stack: Stack, champion: str, tmp_path: Path) -> None:
    """Two `edgeroute serve --model models:/edgeroute@champion` replicas writing one Postgres
    trail answer with the champion, and the trail names both."""
    trail = stack.postgres.database("e2e_audit")
    env = stack.env | {"EDGEROUTE_AUDIT_KEY": "the e2e fleet's key"}
    replicas = []
    try:
        for name in ("edge-1", "edge-2"):
            port = free_port()
            replicas.append(Process(
                [str(BIN / "edgeroute"), "serve", "--model", "models:/edgeroute@champion",
                 "--port", str(port), "--audit", trail, "--set", f"audit.instance={name}",
                 "--set", f"audit.spool={tmp_path / name}.jsonl"],
                env, tmp_path / f"{name}.log",
            ))  # fmt: skip
            wait_ready(f"http://127.0.0.1:{port}", timeout_s=120, process=replicas[-1].popen)
            answer = httpx.post(f"http://127.0.0.1:{port}/v1/classify", json={"text": "where is my parcel?"})
            assert answer.status_code == 200 and answer.json()["model_version"] == champion
    finally:
        for replica in replicas:
            replica.stop()
    rows = window(trail, 0, 100)
    assert sorted((row["instance"], row["model_version"]) for row in rows) == [
        ("edge-1", champion), ("edge-2", champion),
    ]  # fmt: skip


MONITOR_THREE_TIMES = """
import json, sys
from flows.monitoring import monitor_router
print(json.dumps([monitor_router(sys.argv[1]) for _ in range(3)]))
"""


@contextmanager
def api(stack: Stack):
    """A Prefect client of the stack's server."""
    with temporary_settings({PREFECT_API_URL: stack.api_url}), get_client(sync_client=True) as client:
        yield client


def poll(read, done, timeout_s: float = 60):
    """``read()`` until ``done`` of it holds (or the time is up): the last value read."""
    deadline = time.monotonic() + timeout_s
    while not done(value := read()) and time.monotonic() < deadline:
        time.sleep(0.5)
    return value


def test_a_degraded_service_runs_training_once_through_the_deployment_trigger(stack, tiny_bundle, tmp_path):
    with api(stack) as client:
        training = client.read_deployment_by_name("training-pipeline/retrain-from-production")
        [automation] = client.read_automations_by_name("retrain-when-the-router-degrades")
    trigger = automation.trigger
    assert automation.enabled and trigger.expect == {DEGRADED} and trigger.posture == "Reactive"
    assert (trigger.threshold, trigger.within) == (2, timedelta(days=1))
    assert trigger.match.root == {"prefect.resource.id": "edgeroute.service.*"}
    assert trigger.for_each == {GROUP_LABEL}, "one count per service group"
    assert [(a.type, a.deployment_id) for a in automation.actions] == [("run-deployment", training.id)]

    def triggered(client) -> list:
        runs = client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[training.id]))
        )
        return [r for r in runs if r.created_by is not None and r.created_by.id == automation.id]

    # The worker leaves the triggered run Scheduled (no demo training here): its queue is paused.
    paused = stack.prefect("work-queue", "pause", "default", "--pool", POOL)
    assert paused.returncode == 0, paused.stdout + paused.stderr
    service, audit = edge_service(tiny_bundle, tmp_path)
    try:
        with api(stack) as client:
            assert triggered(client) == [], "nothing retrained before the service degraded"
        degrade(service.url)  # every answer was wrong
        # Three checks, as the monitor deployment makes them, each emitting to the stack's server.
        checks = subprocess.run(
            [sys.executable, "-c", MONITOR_THREE_TIMES, service.url],
            cwd=ROOT, env=stack.env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert checks.returncode == 0, checks.stdout[-2000:] + checks.stderr[-3000:]
        summaries = json.loads(checks.stdout.splitlines()[-1])
        assert [s["event"] for s in summaries] == [DEGRADED] * 3

        with api(stack) as client:
            runs = poll(lambda: triggered(client), bool)
            # The trigger has seen the third event once the server stored it; a little more time
            # for it to (not) act on it, then still one run.
            query = EventFilter(
                event=EventNameFilter(name=[DEGRADED]),
                resource=EventResourceFilter(id=[f"edgeroute.service.{service.url}"]),
            )
            stored = poll(lambda: client.read_events(filter=query, limit=50).events, lambda e: len(e) == 3)
            assert {str(e.id) for e in stored} == {s["event_id"] for s in summaries}
            time.sleep(5)
            runs = triggered(client)
            assert len(runs) == 1, [(r.name, r.created) for r in runs]
            [run] = runs
            assert run.created_by.type == "AUTOMATION" and run.state_type == StateType.SCHEDULED
            assert run.parameters == {"preset": "demo", "production_trail": "work/audit/audit.db"}
    finally:
        service.stop()
        audit.close()
        with api(stack) as client:
            for run in triggered(client):
                client.set_flow_run_state(run.id, Cancelled(), force=True)
        resumed = stack.prefect("work-queue", "resume", "default", "--pool", POOL)
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
