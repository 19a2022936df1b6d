"""Bounded HTTP load test of the router service, on loopback. Prints one JSON object.

    .venv/bin/python -m bench.load --bundle work/bundles/<run id> [--requests 4000] [--save]

Starts `edgeroute serve` processes on free 127.0.0.1 ports and sends at most ``--requests``
single-message requests, within at most ``--duration`` seconds, over ``--concurrency``
keep-alive connections from one asyncio client in this process (a raw HTTP/1.1 client: the
generator shares the 2 CPUs with the service), then stops everything it started. Scenarios:

- ``edge_only``: an edge service whose router never escalates (the bundle with its thresholds
  opened), so every answer comes from the INT8 model; concurrent requests are micro-batched;
- ``edge_only_unbatched``: the same with ``--set batching.max_texts=0``: each request its own model call;
- ``with_escalations``: the bundle's router with its minimum confidence set so that
  ``--escalate`` of the messages (default 10 %) go to a cloud-role service over HTTP.

Baselines, measured in the same run: the unbatched service (what micro-batching buys), and the
same router called in-process, one message per call, without HTTP. Messages are the bundle's
test split when its data is still in ``work/``, else generated ones. ``--save`` also writes
``bench/results/load.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from bench.common import emit, messages, milliseconds, start_service, stop_service
from edgeroute.bundle import ROUTER, derive_bundle, load_bundle


async def _client(url: str, texts: list[str], counter, deadline: float, out: dict) -> None:
    """One keep-alive HTTP/1.1 connection sending requests back to back (no client library:
    the load generator shares the CPUs with the service, so it must cost little)."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        for i in counter:
            if time.monotonic() > deadline:
                return
            body = json.dumps({"text": texts[i % len(texts)]}).encode()
            request = (
                f"POST /v1/classify HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n"
            ).encode() + body
            began = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length")))  # fmt: skip
            payload = await reader.readexactly(length)
            elapsed = time.perf_counter() - began
            status = int(head.split(b" ", 2)[1])
            if status == 200:
                out["latencies"].append(elapsed)
                route = json.loads(payload)["results"][0]["route"]
                out["routes"][route] = out["routes"].get(route, 0) + 1
            else:
                out["errors"].append(str(status))
    except (OSError, asyncio.IncompleteReadError) as exc:
        out["errors"].append(type(exc).__name__)
    finally:
        writer.close()


def load(url: str, texts: list[str], requests: int, concurrency: int, duration_s: float) -> dict:
    """``requests`` POSTs of one message each over ``concurrency`` connections, stopping at ``duration_s``."""
    out: dict = {"latencies": [], "errors": [], "routes": {}}
    counter = iter(range(requests))

    async def run() -> None:
        deadline = time.monotonic() + duration_s
        await asyncio.gather(*(_client(url, texts, counter, deadline, out) for _ in range(concurrency)))

    began = time.perf_counter()
    asyncio.run(run())
    wall = time.perf_counter() - began
    return {
        "requests": len(out["latencies"]) + len(out["errors"]),
        "errors": len(out["errors"]),
        "error_kinds": sorted(set(out["errors"])),
        "seconds": round(wall, 2),
        "requests_per_s": round(len(out["latencies"]) / wall, 1),
        **milliseconds(out["latencies"] or [float("nan")]),
        "routes": out["routes"],
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
        timings.append(time.perf_counter() - start_at)
    return {"requests_per_s": round(len(timings) / sum(timings), 1), **milliseconds(timings)}


def with_settings(source, settings, directory: Path) -> Path:
    """The source bundle with other router settings."""
    directory.mkdir()
    (directory / "router.json").write_text(settings.to_json())
    return derive_bundle(source, directory / "bundle", replace={ROUTER: directory / "router.json"},
                         metrics={}, lineage={})  # fmt: skip


def scenario(
    bundle: Path, workdir: Path, texts: list[str], args, *options: str, cloud: Path | None = None
) -> dict:
    """A load run against an edge service on ``bundle`` (and a cloud-role service on ``cloud``)."""
    started = []
    try:
        if cloud is not None:
            process, cloud_url = start_service(cloud, "cloud", workdir)
            started.append(process)
            options = (*options, "--cloud-url", cloud_url)
        process, url = start_service(
            bundle, "edge", workdir, "--set", "limits.max_batch=1024", *args.edge_options.split(), *options
        )
        started.append(process)
        load(url, texts, 200, args.concurrency, args.duration)  # warm-up
        return load(url, texts, args.requests, args.concurrency, args.duration)
    finally:
        for process in reversed(started):
            stop_service(process)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds, at most, per scenario")
    parser.add_argument("--escalate", type=float, default=0.1, help="share of messages sent to the cloud")
    parser.add_argument("--edge-options", default="", help="more `edgeroute serve` options for the edge")
    parser.add_argument("--save", action="store_true")
    args = parser.parse_args()
    texts = messages(args.bundle)
    report: dict = {"bundle": str(args.bundle), "requests": args.requests, "concurrency": args.concurrency,
                    "edge_options": args.edge_options}  # fmt: skip
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
        report["baseline_in_process"] = in_process(edge_only, texts, args.requests)
        report["edge_only_unbatched"] = scenario(
            edge_only, workdir, texts, args, "--set", "batching.max_texts=0"
        )
        report["edge_only"] = scenario(edge_only, workdir, texts, args)
        report["with_escalations"] = scenario(escalating, workdir, texts, args, cloud=escalating)
    rate = {
        name: report[name]["requests_per_s"]
        for name in ("baseline_in_process", "edge_only_unbatched", "edge_only")
    }
    report["ratios"] = {
        "micro_batched_vs_unbatched_throughput": round(rate["edge_only"] / rate["edge_only_unbatched"], 2),
        "micro_batched_http_vs_in_process_throughput": round(
            rate["edge_only"] / rate["baseline_in_process"], 2
        ),
        "with_escalations_vs_edge_only_throughput": round(
            report["with_escalations"]["requests_per_s"] / rate["edge_only"], 2
        ),
    }
    report["goals"] = {"requests_per_s": 800, "p99_ms": 20}
    emit("load", report, args.save)


if __name__ == "__main__":
    main()
