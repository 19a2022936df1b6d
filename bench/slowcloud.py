"""A cloud that drips its answer, one byte a second: does the edge still answer on time, and
does the circuit open? Prints one JSON object.

    .venv/bin/python -m bench.slowcloud --bundle work/bundles/<run id> [--rate 50] [--duration 30]
        [--escalate 0.1] [--save]

Two runs of the same open-loop load (``bench.load.open_loop``: Poisson arrivals at ``--rate``
req/s for ``--duration`` s, latency from each request's scheduled time) against an edge service
whose router escalates ``--escalate`` of the messages (its minimum confidence set to that
quantile of their confidences; complexity, unfamiliar words and shadowing off):

- ``healthy``: escalations go to a cloud-role service on the same bundle;
- ``dripping``: escalations go to a server that accepts each request and sends its answer one
  byte every ``--drip-s`` seconds, headers included, so that no read ever times out.

Per run: the latency of the requests the edge answered alone (``edge_alone``: reason
``optimal_edge``, the ones a cloud must never hold), of all requests, the errors (a 504 is a
request held past ``limits.timeout_s``), the routes, and the circuit's states from ``/readyz``,
polled every 0.5 s (``cloud_circuit_seen_s``: each state, and when it was first seen).
``ratios.edge_alone_p99_dripping_vs_healthy`` is the goal's figure (≤ 2).
``--save`` also writes ``bench/results/slowcloud.json``.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import numpy as np

from bench.common import emit, messages, start_service, stop_service
from bench.load import open_loop, with_settings
from edgeroute.bundle import load_bundle


class DrippingCloud:
    """An HTTP server on 127.0.0.1 that answers every request, one byte every ``drip_s``."""

    def __init__(self, drip_s: float) -> None:
        self.requests = 0
        cloud = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                cloud.requests += 1
                self.rfile.read(int(self.headers["Content-Length"]))
                answer = b'HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\n{"results": [null]} '
                for byte in answer:
                    try:
                        self.wfile.write(bytes([byte]))
                    except OSError:  # the edge gave up on it
                        return
                    time.sleep(drip_s)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def run(bundle: Path, workdir: Path, cloud_url: str, texts: list[str], args) -> dict:
    """The open-loop load against an edge service escalating to ``cloud_url``."""
    process, url = start_service(bundle, "edge", workdir, "--cloud-url", cloud_url)
    seen: dict[str, float] = {}  # each circuit state /readyz showed, and when first (s from the start)
    done = threading.Event()

    def watch(start: float) -> None:
        while not done.wait(0.5):
            state = httpx.get(f"{url}/readyz", timeout=5).json()["cloud"]
            seen.setdefault(state, round(time.monotonic() - start, 1))

    try:
        open_loop(url, texts, args.rate, 100, 2.0, args.max_connections, args.seed)  # warm-up
        watcher = threading.Thread(target=watch, args=(time.monotonic(),), daemon=True)
        watcher.start()
        requests = int(args.rate * args.duration)
        point = open_loop(url, texts, args.rate, requests, args.duration, args.max_connections, args.seed)
        done.set()
        watcher.join()
        point["cloud_circuit_seen_s"] = seen
        return point
    finally:
        done.set()
        stop_service(process)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--rate", type=float, default=50.0, help="requests per second, open loop")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds per run")
    parser.add_argument("--escalate", type=float, default=0.1, help="share of messages sent to the cloud")
    parser.add_argument("--drip-s", type=float, default=1.0, help="seconds between the dripped bytes")
    parser.add_argument("--max-connections", type=int, default=256)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--save", action="store_true")
    args = parser.parse_args()
    texts = messages(args.bundle)
    source = load_bundle(args.bundle)
    confidence = source.router().features(texts).confidence
    settings = replace(
        source.router_settings(), max_complexity=1.0, max_unfamiliar_share=1.0, shadow_rate=0.0,
        min_confidence=float(np.quantile(confidence, args.escalate)),
    )  # fmt: skip
    report: dict = {"bundle": str(args.bundle), "rate_per_s": args.rate, "duration_s": args.duration,
                    "escalate": args.escalate, "drip_s": args.drip_s}  # fmt: skip
    with tempfile.TemporaryDirectory() as scratch:
        workdir = Path(scratch)
        escalating = with_settings(source, settings, workdir / "escalating")
        cloud_process, cloud_url = start_service(escalating, "cloud", workdir)
        try:
            report["healthy"] = run(escalating, workdir, cloud_url, texts, args)
        finally:
            stop_service(cloud_process)
        dripping = DrippingCloud(args.drip_s)
        try:
            report["dripping"] = run(escalating, workdir, dripping.url, texts, args)
            report["dripping"]["cloud_requests"] = dripping.requests
        finally:
            dripping.stop()
    healthy, slow = ((report[name]["edge_alone"] or {}).get("p99_ms") for name in ("healthy", "dripping"))
    # None when no request was answered by the edge alone: every one was held or failed.
    ratio = round(slow / healthy, 2) if healthy and slow else None
    report["ratios"] = {"edge_alone_p99_dripping_vs_healthy": ratio}
    report["goals"] = {"edge_alone_p99_dripping_vs_healthy": 2.0, "dripping_cloud_circuit_seen": "open"}
    emit("slowcloud", report, args.save)


if __name__ == "__main__":
    main()
