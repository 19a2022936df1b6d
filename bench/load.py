"""Bounded HTTP load test of the router service, on loopback. Prints one JSON object.

    .venv/bin/python bench/load.py --bundle work/bundles/<run id> [--requests 2000] [--concurrency 8]

Starts `edgeroute serve` processes on free 127.0.0.1 ports and sends at most ``--requests``
single-message requests, within at most ``--duration`` seconds, from ``--concurrency`` client
threads (keep-alive connections), then stops everything it started. Two scenarios:

- ``edge_only``: an edge service whose router never escalates (the bundle with its thresholds
  opened), so every answer comes from the INT8 model;
- ``with_escalations``: the bundle's router with its minimum confidence set so that
  ``--escalate`` of the messages (default 10 %) go to a cloud-role service over HTTP.

The baseline, measured in the same run, is the same router called in-process without HTTP:
the ratios say what the HTTP layer costs. Messages are the bundle's test split when its data
is still in ``work/``, else generated ones.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

import httpx
import numpy as np

from edgeroute.bundle import ROUTER, derive_bundle, load_bundle

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(
    bundle: Path, role: str, workdir: Path, cloud_url: str | None = None
) -> tuple[subprocess.Popen, str]:
    port = free_port()
    args = [str(BIN / "edgeroute"), "serve", "--bundle", str(bundle), "--role", role, "--port", str(port),
            "--audit", str(workdir / f"{role}-{port}.db"), "--max-batch", "1024"]  # fmt: skip
    process = subprocess.Popen(
        [*args, *(["--cloud-url", cloud_url] if cloud_url else [])],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return process, url
        except httpx.TransportError:
            time.sleep(0.1)
    raise TimeoutError(f"{role} service on {url} not ready")


def stop(process: subprocess.Popen) -> None:
    os.killpg(process.pid, signal.SIGTERM)
    process.wait(timeout=30)


def load(url: str, texts: list[str], requests: int, concurrency: int, duration_s: float) -> dict:
    """``requests`` POSTs of one message each from ``concurrency`` threads, stopping at ``duration_s``."""
    latencies: list[float] = []
    errors: list[str] = []
    routes: dict[str, int] = {}
    counter = iter(range(requests))
    lock = threading.Lock()
    deadline = time.monotonic() + duration_s

    def worker() -> None:
        with httpx.Client(timeout=10) as client:
            for i in counter:
                if time.monotonic() > deadline:
                    return
                start_at = time.perf_counter()
                try:
                    response = client.post(f"{url}/v1/classify", json={"text": texts[i % len(texts)]})
                    elapsed = (time.perf_counter() - start_at) * 1000
                    with lock:
                        if response.status_code == 200:
                            latencies.append(elapsed)
                            route = response.json()["results"][0]["route"]
                            routes[route] = routes.get(route, 0) + 1
                        else:
                            errors.append(str(response.status_code))
                except httpx.HTTPError as exc:
                    with lock:
                        errors.append(type(exc).__name__)

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - began
    p50, p95, p99 = np.percentile(latencies, [50, 95, 99]) if latencies else (np.nan,) * 3
    return {
        "requests": len(latencies) + len(errors),
        "errors": len(errors),
        "error_kinds": sorted(set(errors)),
        "seconds": round(wall, 2),
        "requests_per_s": round(len(latencies) / wall, 1),
        "p50_ms": round(float(p50), 2),
        "p95_ms": round(float(p95), 2),
        "p99_ms": round(float(p99), 2),
        "routes": routes,
    }


def in_process(bundle: Path, texts: list[str], requests: int) -> dict:
    """The baseline: the same router, one message per call, no HTTP."""
    router = load_bundle(bundle).router()
    for text in texts[:50]:
        router.route([text])
    timings = []
    for i in range(requests):
        start_at = time.perf_counter()
        router.route([texts[i % len(texts)]])
        timings.append((time.perf_counter() - start_at) * 1000)
    p50, p95 = np.percentile(timings, [50, 95])
    return {"requests_per_s": round(1000 * len(timings) / sum(timings), 1), "p50_ms": round(float(p50), 2),
            "p95_ms": round(float(p95), 2)}  # fmt: skip


def with_settings(source, settings, directory: Path) -> Path:
    """The source bundle with other router settings."""
    directory.mkdir()
    (directory / "router.json").write_text(settings.to_json())
    return derive_bundle(source, directory / "bundle", replace={ROUTER: directory / "router.json"},
                         metrics={}, lineage={})  # fmt: skip


def messages(bundle: Path) -> list[str]:
    data_dir = Path(load_bundle(bundle).manifest["lineage"].get("data_dir", ""))
    if (data_dir / "test.parquet").is_file():
        import pandas as pd

        return pd.read_parquet(data_dir / "test.parquet")["text"].tolist()
    from tasks.synthetic import generate

    return [row["text"] for row in generate(1000, seed=3)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds, at most, per scenario")
    parser.add_argument("--escalate", type=float, default=0.1, help="share of messages sent to the cloud")
    args = parser.parse_args()
    texts = messages(args.bundle)
    report: dict = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "requests": args.requests,
        "concurrency": args.concurrency,
    }
    with tempfile.TemporaryDirectory() as scratch:
        workdir = Path(scratch)
        source = load_bundle(args.bundle)
        settings = replace(source.router_settings(), max_complexity=1.0, max_unfamiliar_share=1.0)
        confidence = source.router().features(texts).confidence
        edge_only = with_settings(source, replace(settings, min_confidence=0.0), workdir / "edge-only")
        threshold = float(np.quantile(confidence, args.escalate))
        escalating = with_settings(
            source, replace(settings, min_confidence=threshold), workdir / "escalating"
        )
        report["baseline_in_process"] = {
            "edge_only": in_process(edge_only, texts, args.requests),
            "with_escalations": in_process(escalating, texts, args.requests),
        }
        edge, url = start(edge_only, "edge", workdir)
        try:
            report["edge_only"] = load(url, texts, args.requests, args.concurrency, args.duration)
        finally:
            stop(edge)
        cloud, cloud_url = start(escalating, "cloud", workdir)
        edge, url = start(escalating, "edge", workdir, cloud_url)
        try:
            report["with_escalations"] = load(url, texts, args.requests, args.concurrency, args.duration)
        finally:
            stop(edge)
            stop(cloud)
    report["ratios"] = {
        f"{name}_http_vs_in_process_throughput": round(
            report[name]["requests_per_s"] / report["baseline_in_process"][name]["requests_per_s"], 3
        )
        for name in ("edge_only", "with_escalations")
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
