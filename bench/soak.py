"""Bounded soak test of the router service, on loopback. Prints one JSON object.

    .venv/bin/python -m bench.soak --bundle work/bundles/<run id> [--duration 300] [--concurrency 8]

Starts one `edgeroute serve` process (edge role; escalations go to the bundle's FP32 model in
the same process) on a free 127.0.0.1 port, and sends single-message requests from
``--concurrency`` client threads (keep-alive connections) for ``--duration`` seconds, then stops
it. Every ``--sample`` seconds it reads the service's resident memory (RSS, from /proc); the
first sample is taken after a warm-up of ``--warmup`` requests, so that model loading and the
first allocations are not counted as drift. What a soak shows that a load test does not: errors
that appear only after a while, and memory that grows with the number of requests (the audit
trail, the monitor's window, the metrics).
"""

from __future__ import annotations

import argparse
import sqlite3
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

from bench.common import emit, messages, rss_mb, start_service, stop_service


def soak(url: str, pid: int, texts: list[str], concurrency: int, duration_s: float, sample_s: float) -> dict:
    """Requests from ``concurrency`` threads until ``duration_s`` is up; RSS every ``sample_s``."""
    latencies: list[float] = []
    errors: dict[str, int] = {}
    samples: list[tuple[float, float]] = []
    lock = threading.Lock()
    began = time.monotonic()
    deadline = began + duration_s
    done = threading.Event()

    def worker(offset: int) -> None:
        i = offset
        with httpx.Client(timeout=10) as client:
            while time.monotonic() < deadline:
                start_at = time.perf_counter()
                try:
                    response = client.post(f"{url}/v1/classify", json={"text": texts[i % len(texts)]})
                    kind = None if response.status_code == 200 else str(response.status_code)
                except httpx.HTTPError as exc:
                    kind = type(exc).__name__
                elapsed = (time.perf_counter() - start_at) * 1000
                with lock:
                    if kind is None:
                        latencies.append(elapsed)
                    else:
                        errors[kind] = errors.get(kind, 0) + 1
                i += concurrency

    def sampler() -> None:
        while not done.wait(sample_s):
            samples.append((round(time.monotonic() - began, 1), round(rss_mb(pid), 1)))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(concurrency)]
    watcher = threading.Thread(target=sampler)
    samples.append((0.0, round(rss_mb(pid), 1)))
    watcher.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    done.set()
    watcher.join()
    wall = time.monotonic() - began
    samples.append((round(wall, 1), round(rss_mb(pid), 1)))
    p50, p95, p99 = np.percentile(latencies, [50, 95, 99]) if latencies else (np.nan,) * 3
    rss = [mb for _, mb in samples]
    return {
        "seconds": round(wall, 1),
        "requests": len(latencies) + sum(errors.values()),
        "errors": sum(errors.values()),
        "error_kinds": errors,
        "requests_per_s": round(len(latencies) / wall, 1),
        "p50_ms": round(float(p50), 2),
        "p95_ms": round(float(p95), 2),
        "p99_ms": round(float(p99), 2),
        "rss_start_mb": rss[0],
        "rss_end_mb": rss[-1],
        "rss_drift_mb": round(rss[-1] - rss[0], 1),
        "rss_max_mb": max(rss),
        "rss_samples": samples,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--duration", type=float, default=300.0, help="seconds of load")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=200, help="requests before the first RSS sample")
    parser.add_argument("--sample", type=float, default=10.0, help="seconds between RSS samples")
    parser.add_argument("--save", action="store_true")
    args = parser.parse_args()
    texts = messages(args.bundle)
    report: dict = {
        "bundle": str(args.bundle),
        "duration_s": args.duration,
        "concurrency": args.concurrency,
    }
    with tempfile.TemporaryDirectory() as scratch:
        process, url = start_service(args.bundle, "edge", Path(scratch))
        try:
            with httpx.Client(timeout=10) as client:
                for i in range(args.warmup):
                    client.post(f"{url}/v1/classify", json={"text": texts[i % len(texts)]}).raise_for_status()
            report |= soak(url, process.pid, texts, args.concurrency, args.duration, args.sample)
            report["health"] = httpx.get(f"{url}/v1/health", timeout=10).json()["metrics"]
        finally:
            stop_service(process)
        # Loses nothing: every answered request, warm-up included, is in the audit trail.
        (database,) = Path(scratch).glob("edge-*.db")
        with sqlite3.connect(database) as db:
            report["audit_rows"] = db.execute("SELECT COUNT(*) FROM decisions").fetchone()[0]
        report["answered"] = args.warmup + report["requests"] - report["errors"]
    emit("soak", report, args.save)


if __name__ == "__main__":
    main()
