"""Operating the champion with real processes on 127.0.0.1: an `mlflow server` holding the
registry, `edgeroute serve --model models:/…@champion --canary models:/…@challenger` following
both aliases every second, and promotions, a rollback and a tampered version under load, made
with the `edgeroute` commands a user types."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tasks import registry
from tasks.support import tracking
from tests.services import MlflowServer, Process, free_port, wait_ready

pytestmark = pytest.mark.e2e
NAME = "edgeroute-e2e"
EDGEROUTE = str(Path(sys.executable).parent / "edgeroute")
REFRESH_S = 1.0


@pytest.fixture
def mlflow_server(tmp_path, monkeypatch):
    server = MlflowServer(tmp_path / "mlflow")
    server.root.mkdir()
    server.start()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
    yield server
    server.kill()


class Load:
    """Single-message requests from four threads, each answer's status and version kept."""

    def __init__(self, url: str) -> None:
        self.url, self.answers, self.stopped = url, [], threading.Event()
        self.threads = [threading.Thread(target=self._send) for _ in range(4)]

    def _send(self) -> None:
        with httpx.Client(timeout=30) as client:
            while not self.stopped.is_set():
                response = client.post(f"{self.url}/v1/classify", json={"text": "my parcel never came"})
                ok = response.status_code == 200
                self.answers.append(
                    (response.status_code, response.json()["results"][0]["model_version"] if ok else "")
                )

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_) -> None:
        self.stopped.set()
        for thread in self.threads:
            thread.join()


def edgeroute(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [EDGEROUTE, *args], env=os.environ.copy(), capture_output=True, text=True, timeout=120
    )


def readiness(url: str) -> dict:
    return httpx.get(f"{url}/readyz", timeout=5).json()


def seen_within(url: str, version: str, timeout_s: float) -> float:
    """Seconds until /readyz names ``version`` as the champion; fails past ``timeout_s``."""
    began = time.monotonic()
    while readiness(url)["model_version"] != version:
        assert time.monotonic() - began < timeout_s, f"{version} not served within {timeout_s} s"
        time.sleep(0.05)
    return time.monotonic() - began


def tamper(version: str, server: MlflowServer) -> None:
    """Change a byte of the version's edge model where the artifact store keeps it."""
    location = tracking.client().get_model_version_download_uri(NAME, version)
    (onnx,) = (server.root / "artifacts" / location.removeprefix("mlflow-artifacts:/")).rglob(
        "edge/model.onnx"
    )
    data = bytearray(onnx.read_bytes())
    data[-1] ^= 0xFF
    onnx.write_bytes(bytes(data))


def test_the_service_follows_promotions_and_a_rollback_under_load_and_serves_a_canary(
    tiny_bundle, escalating_bundle, tmp_path, mlflow_server
):
    with tracking.pipeline_run("champion-e2e", "parent"):
        for bundle in (tiny_bundle, escalating_bundle, tiny_bundle):
            registry.register_bundle(bundle, NAME, ["where is my parcel"])
    assert edgeroute("promote", "1", "--name", NAME).returncode == 0
    tracking.client().set_registered_model_alias(NAME, registry.CHALLENGER, "2")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    scratch = tmp_path / "tmp"  # the service's temporary folders, where it downloads versions
    scratch.mkdir()
    service = Process(
        [EDGEROUTE, "serve", "--model", f"models:/{NAME}@champion", "--canary", f"models:/{NAME}@challenger",
         "--canary-share", "0.1", "--refresh-s", str(REFRESH_S), "--port", str(port),
         "--audit", str(tmp_path / "audit.db")],
        os.environ | {"TMPDIR": str(scratch)}, tmp_path / "serve.log",
    )  # fmt: skip
    try:
        wait_ready(url, 120, service.popen)
        assert readiness(url)["canary"] == {"model_version": f"{NAME}/2", "share": 0.1}
        with Load(url) as load:
            time.sleep(3)
            canary = [v for _, v in load.answers].count(f"{NAME}/2") / len(load.answers)

            promoted = edgeroute("promote", "3", "--name", NAME)
            assert promoted.returncode == 0, promoted.stderr
            to_3 = seen_within(url, f"{NAME}/3", 30)
            back = edgeroute("rollback", "--name", NAME)
            assert back.returncode == 0 and "champion is now version 1" in back.stdout, back.stderr
            to_1 = seen_within(url, f"{NAME}/1", 30)
            time.sleep(1)
        health = httpx.get(f"{url}/v1/health").json()
        metrics = httpx.get(f"{url}/metrics").text

        tamper("3", mlflow_server)
        assert edgeroute("promote", "3", "--name", NAME).returncode == 0
        time.sleep(4 * REFRESH_S)
        assert readiness(url)["model_version"] == f"{NAME}/1", "a version that fails to verify is not served"
        # Only the versions served keep their download (champion 1, canary 2); 3, swapped out and
        # then refused, and the first download of 1 are gone.
        assert len(list(scratch.glob("edgeroute-model-*"))) == 2
    finally:
        service.stop()
    assert not list(scratch.glob("edgeroute-model-*")), "the service removes its downloads at exit"
    log = (tmp_path / "serve.log").read_text()
    statuses = {status for status, _ in load.answers}
    assert statuses == {200}, f"failed requests during the swaps: {statuses}"
    # Each swap is seen within the refresh period plus the download, check and warm-up.
    assert to_3 < REFRESH_S + 20 and to_1 < REFRESH_S + 20, (to_3, to_1)
    versions = {v for _, v in load.answers}
    assert {f"{NAME}/1", f"{NAME}/2", f"{NAME}/3"} <= versions
    assert 0.02 < canary < 0.25, canary
    assert set(health["versions"]) >= {f"{NAME}/1", f"{NAME}/2", f"{NAME}/3"}
    assert f'edgeroute_model_info{{slot="champion",version="{NAME}/1"}} 1.0' in metrics
    assert f'slot="champion",version="{NAME}/3"' not in metrics
    assert f"version {NAME}/3 refused" in log and "does not match its sha256" in log
    assert f"champion {NAME}/1 -> {NAME}/3" in log and f"champion {NAME}/3 -> {NAME}/1" in log
