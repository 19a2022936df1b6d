"""The training side's commands of `edgeroute`, run as a user runs them: real processes, real
Prefect server, real MLflow."""

from __future__ import annotations

import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from tests.services import BIN, run_cli


def test_config_prints_the_resolved_preset(tmp_path):
    done = run_cli([str(BIN / "edgeroute"), "config", "--preset", "tiny", "--set", "seed=3"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert yaml.safe_load(done.stdout)["seed"] == 3


def test_config_error_exits_2_naming_the_field(tmp_path):
    done = run_cli([str(BIN / "edgeroute"), "config", "--set", "data.colour=blue"], tmp_path)
    assert done.returncode == 2
    assert "data.colour: unknown field" in done.stderr


def test_train_with_missing_data_exits_1_with_the_reason(tmp_path, prefect_harness):
    done = run_cli(
        [str(BIN / "edgeroute"), "train", "--preset", "tiny", "--data", "missing.csv"],
        tmp_path,
        prefect_harness,
    )
    assert done.returncode == 1
    assert "error: data file not found: missing.csv" in done.stderr
    assert not (tmp_path / "work").exists()


def test_python_m_flows_train_runs_the_flow(tmp_path, prefect_harness):
    done = run_cli([sys.executable, "-m", "flows", "train", "--preset", "tiny"], tmp_path, prefect_harness)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "# Training run `edgeroute-tiny-" in done.stdout and "## Registry" in done.stdout
    summary = done.stdout.split("\nOutputs\n", 1)[1]
    lines = dict(line.split(None, 1) for line in summary.splitlines() if line.startswith("  "))
    data_dir = Path(lines["data_dir"])
    assert data_dir.parent == tmp_path / "work" / "data"
    assert (data_dir / "train.parquet").is_file()
    assert len(lines["mlflow_run_id"]) == 32
    assert Path(lines["classifier_checkpoint"], "config.json").is_file()


def test_train_with_a_gate_that_cannot_pass_exits_1_with_the_report(tmp_path, prefect_harness):
    done = run_cli(
        [str(BIN / "edgeroute"), "train", "--preset", "tiny", "--set", "gate.min_accuracy_retention=1.5",
         "--set", "gate.max_attempts=2"],
        tmp_path,
        prefect_harness,
    )  # fmt: skip
    assert done.returncode == 1
    assert "error: # Quantization gate" in done.stderr
    assert "| 2 | dynamic |" in done.stderr  # max_attempts=2: the primary, then dynamic INT8 last
    assert not (tmp_path / "work" / "bundles").exists()


def test_classify_with_an_unknown_registered_model_exits_2(tmp_path):
    done = run_cli(
        [str(BIN / "edgeroute"), "classify", "--model", "models:/nope@champion", "hello"], tmp_path
    )
    assert done.returncode == 2
    assert "error: --model models:/nope@champion:" in done.stderr and "Traceback" not in done.stderr


class HealthService:
    """A stand-in edge service over real HTTP on 127.0.0.1: ``GET /v1/health`` answers ``report``
    to requests with ``api_key`` as their ``X-API-Key``, 401 to others; with ``redirect`` set,
    302 to that URL instead. ``keys`` holds the key of every request, in order."""

    def __init__(self, report: dict, api_key: str) -> None:
        service = self
        self.report, self.redirect, self.keys = report, None, []

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                service.keys.append(self.headers.get("X-API-Key"))
                if service.redirect is not None:
                    self.send_response(302)
                    self.send_header("Location", service.redirect)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if self.path != "/v1/health":
                    status, body = 404, b"{}"
                elif self.headers.get("X-API-Key") != api_key:
                    status, body = 401, b'{"detail": "missing or wrong API key"}'
                else:
                    status, body = 200, json.dumps(service.report).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def three_versions(tmp_path, monkeypatch) -> MlflowClient:
    """The registry run_cli's commands use, holding versions 1 to 3 of "edgeroute", 2 the champion."""
    from tasks import registry

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    client = MlflowClient(uri)
    client.create_registered_model("edgeroute")
    (tmp_path / "model").mkdir()
    for _ in range(3):
        client.create_model_version("edgeroute", source=(tmp_path / "model").as_uri())
    registry.set_champion("edgeroute", "2", "first champion")
    return client


def test_promote_from_canary_moves_the_champion_only_on_enough_good_feedback(tmp_path, monkeypatch):
    client = three_versions(tmp_path, monkeypatch)

    def served(canary: str, labelled: int, accuracy: float) -> dict:
        def stats(labelled: int, accuracy: float) -> dict:  # labelled by two sources in equal parts
            sources = {"crm": labelled // 2, "helpdesk": labelled - labelled // 2}
            return {"requests": 10 * labelled, "accuracy": accuracy, "labelled": labelled, "edge_share": 0.9,
                    "feedback_sources": sources}  # fmt: skip

        return {
            "model_version": "edgeroute/2",
            "canary": {"model_version": canary, "share": 0.05},
            "versions": {"edgeroute/2": stats(900, 0.91), canary: stats(labelled, accuracy)},
            "window_s": 3600.0,
        }

    service = HealthService(served("edgeroute/3", 150, 0.95), api_key="s3cret")
    monkeypatch.setenv("EDGEROUTE_API_KEY", "s3cret")
    promote = [str(BIN / "edgeroute"), "promote", "--from-canary", service.url]

    def champion() -> str:
        return str(client.get_model_version_by_alias("edgeroute", "champion").version)

    try:
        early = run_cli(promote, tmp_path)
        assert early.returncode == 1, early.stderr
        assert "canary not promoted: not enough feedback yet" in early.stderr
        assert "canary edgeroute/3 150 of 200 labelled" in early.stderr and champion() == "2"

        service.report = served("edgeroute/3", 400, 0.85)
        worse = run_cli([*promote, "--tolerance", "0.05"], tmp_path)
        assert worse.returncode == 1 and "0.8500 (400 labelled) < champion edgeroute/2 0.9100" in worse.stderr
        assert champion() == "2"

        service.report = served("other-model/3", 400, 0.95)
        other = run_cli(promote, tmp_path)
        assert other.returncode == 1 and "is other-model/3, not a version of 'edgeroute'" in other.stderr

        service.report = served("edgeroute/9", 400, 0.95)
        missing = run_cli(promote, tmp_path)
        assert missing.returncode == 1 and "has no version 9 (the canary of" in missing.stderr

        service.report = served("edgeroute/3", 400, 0.905)
        monkeypatch.setenv("EDGEROUTE_API_KEY", "wrong")
        refused = run_cli(promote, tmp_path)
        assert (
            refused.returncode == 1
            and "HTTP Error 401" in refused.stderr
            and "EDGEROUTE_API_KEY" in refused.stderr
        )
        monkeypatch.setenv("EDGEROUTE_API_KEY", "s3cret")

        done = run_cli([*promote, "--min-feedback", "300"], tmp_path)
        assert done.returncode == 0, done.stderr
        assert "edgeroute: champion is now version 3 (was 2)" in done.stdout
    finally:
        service.stop()
    assert champion() == "3"
    reason = client.get_model_version("edgeroute", "3").tags["promotion_reason"]
    assert reason.startswith(
        f"canary of {service.url}: live accuracy over the last 3600 s: canary edgeroute/3 0.9050"
    )
    # Promoting by hand still takes a version, and not both.
    both = run_cli([str(BIN / "edgeroute"), "promote", "2", "--from-canary", service.url], tmp_path)
    assert both.returncode == 2 and "give the VERSION to promote, or --from-canary URL" in both.stderr
    assert run_cli([str(BIN / "edgeroute"), "promote", "2"], tmp_path).returncode == 0 and champion() == "2"


def test_the_training_commands_give_prefects_temporary_server_time_to_start_on_a_busy_machine():
    import os
    import subprocess

    read = (
        "import flows.cli; from prefect.settings import get_current_settings; "
        "print(get_current_settings().server.ephemeral.startup_timeout_seconds)"
    )
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"}
    default = subprocess.run(
        [sys.executable, "-c", read], env=env, capture_output=True, text=True, check=True
    )
    assert default.stdout.split()[-1] == "90", "Prefect's own default, 20 s, times out on a loaded 2-core box"
    env["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "300"
    chosen = subprocess.run([sys.executable, "-c", read], env=env, capture_output=True, text=True, check=True)
    assert chosen.stdout.split()[-1] == "300"


def test_reading_a_services_health_never_follows_a_redirect_to_another_origin(monkeypatch):
    import urllib.error

    from tasks.monitoring import read_health

    monkeypatch.setenv("EDGEROUTE_API_KEY", "s3cret")
    elsewhere = HealthService({"status": "ok"}, api_key="s3cret")
    redirecting = HealthService({"status": "ok"}, api_key="s3cret")
    try:
        redirecting.redirect = f"{elsewhere.url}/v1/health"
        with pytest.raises(urllib.error.HTTPError, match="another origin"):
            read_health.fn(redirecting.url)
        assert redirecting.keys == ["s3cret"] and elsewhere.keys == [], "the key went to another origin"
    finally:
        elsewhere.stop()
        redirecting.stop()


def test_promote_from_canary_judges_a_fleet_from_its_postgres_trail(tmp_path, monkeypatch, postgres_url):
    from edgeroute.config import AuditConfig
    from edgeroute.trails import open_trail

    client = three_versions(tmp_path, monkeypatch)
    # Two replicas each serve the champion (edgeroute/2) and the canary (edgeroute/3, 1 in 4).
    now = time.time()
    for replica in ("edge-1", "edge-2"):
        trail = open_trail(AuditConfig(url=postgres_url, spool=tmp_path / f"{replica}.jsonl"), replica)
        rows = [
            {"request_id": f"{replica}-{i}", "time": now - 60 + i / 10,
             "model_version": f"edgeroute/{2 + (i % 4 == 0)}", "route": "edge", "reason": "confident",
             "label": "neutral", "confidence": 0.9, "complexity": 0.1, "cost": 0.001,
             "text": f"where is my parcel {i}"}
            for i in range(200)
        ]  # fmt: skip
        trail.record(rows)
        for i, row in enumerate(rows):  # the champion wrong on 1 in 5 of its answers, the canary never
            wrong = row["model_version"] == "edgeroute/2" and i % 5 == 1
            trail.feedback(row["request_id"], "negative" if wrong else "neutral", f"desk-{i // 4 % 2}")
        trail.close()
    with_password = postgres_url.replace("edgeroute@", "edgeroute:pw-never-shown@")
    promote = [str(BIN / "edgeroute"), "promote", "--from-canary", with_password, "--min-feedback", "80"]
    done = run_cli(promote, tmp_path)
    assert done.returncode == 0, done.stderr
    assert "edgeroute: champion is now version 3 (was 2)" in done.stdout
    reason = client.get_model_version("edgeroute", "3").tags["promotion_reason"]
    assert "canary edgeroute/3 1.0000 (100 labelled) >= champion edgeroute/2 0.8000 (300 labelled)" in reason
    assert "pw-never-shown" not in reason + done.stdout + done.stderr
