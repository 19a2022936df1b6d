"""Bounded HTTP load test of the router service, on loopback. Prints one JSON object.

    .venv/bin/python -m bench.load --bundle work/bundles/<run id> [--requests 4000] [--save]
    .venv/bin/python -m bench.load --bundle DIR --rate 100,200,400,800 [--duration 10] [--teacher-edge]

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

Closed loop, N connections answer-then-send, cannot test "R req/s at p99 <= T": by Little's law
the rate is N / mean latency, so it measures how latency grows with N, not the latency at R.
``--rate R`` (repeatable, or ``100,200,400``) adds an open-loop sweep, ``open_loop``, after the
scenarios above: for each R, Poisson arrivals at R req/s (exponential gaps from ``--seed``) for
``--duration`` seconds and at most ``--requests`` requests, one message each, to the
``edge_only`` service. Each request is sent at its scheduled time whether or not the earlier
ones have answered, on an idle keep-alive connection of a pool that opens another when all
are busy, up to ``--max-connections``; past that a request is an error ``no_connection``
(never a silent delay). Latency runs from the scheduled time, so a late generator or a queue
counts (no coordinated omission). Per rate: what was offered (the sample's own rate), the
achieved rate (answers over the time to the last answer), p50/p95/p99, errors and their kinds,
and how late the generator sent (``send_lag_p99_ms``, the generator's own share of the
latency). ``highest_rate_within_p99_ms``: the highest R with p99 <= the goal's 20 ms, no errors
and an achieved rate within 5 % of the offered one (null if none).

``--teacher-edge`` runs the same sweep against the bundle with the edge student swapped for
its FP32 teacher quantized the same way (``bench.common.teacher_int8``, with the teacher's own
tokenizer): ``open_loop.student`` and ``open_loop.teacher_int8``, and
``ratios.open_loop_student_vs_teacher_int8_highest_rate`` (before and after the student).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import httpx
import numpy as np

from bench.common import emit, messages, milliseconds, start_service, stop_service, teacher_int8
from edgeroute.bundle import CLOUD_MODEL, EDGE_MODEL, ROUTER, TOKENIZER, derive_bundle, load_bundle
from edgeroute.router import OPTIMAL_EDGE

GOALS = {"requests_per_s": 800, "p99_ms": 20}
EDGE_OPTIONS = ("--set", "limits.max_batch=1024")
EDGE_TOKENIZER = str(Path(EDGE_MODEL).parent / TOKENIZER)  # the edge model's own, before the bundle's
RATE_TOLERANCE = 0.05  # an achieved rate this far below the offered one: the service fell behind
REQUEST_TIMEOUT_S = 30.0  # an open-loop request unanswered this long is an error "timeout"
WARM_CONNECTIONS = 8  # opened before an open-loop run's clock starts
IDLE_S = 4.0  # a pooled connection idle longer is not reused: uvicorn closes it at 5 s


def _requests(host: str, texts: list[str]) -> list[bytes]:
    """Each text as one ``POST /v1/classify`` of one message, encoded once before the clock runs."""
    out = []
    for text in texts:
        body = json.dumps({"text": text}).encode()
        out.append(
            (
                f"POST /v1/classify HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n"
            ).encode()
            + body
        )
    return out


async def _exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> tuple[int, bytes, bool]:
    """One request on a keep-alive HTTP/1.1 connection (no client library: the load generator
    shares the CPUs with the service, so it must cost little): status, body, whether the
    connection stays open."""
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.lower().split(b"\r\n")
    length = int(next(line.split(b":")[1] for line in lines if line.startswith(b"content-length")))
    payload = await reader.readexactly(length)
    keep = not any(line.startswith(b"connection:") and b"close" in line for line in lines)
    return int(head.split(b" ", 2)[1]), payload, keep


def _record(out: dict, status: int, payload: bytes, elapsed: float) -> None:
    """One answer into ``out``: its latency, route and the model version that gave it, or its
    status as an error."""
    if status == 200:
        out["latencies"].append(elapsed)
        result = json.loads(payload)["results"][0]
        for key, name in (("routes", result["route"]), ("versions", result["model_version"])):
            out[key][name] = out[key].get(name, 0) + 1
        if result["reason"] == OPTIMAL_EDGE:  # the edge answered alone: no cloud in its latency
            out["edge_alone"].append(elapsed)
    else:
        out["errors"].append(str(status))


def _outcome() -> dict:
    return {"latencies": [], "edge_alone": [], "errors": [], "routes": {}, "versions": {}}


def _summary(out: dict) -> dict:
    return {
        "requests": len(out["latencies"]) + len(out["errors"]),
        "errors": len(out["errors"]),
        "error_kinds": {kind: out["errors"].count(kind) for kind in sorted(set(out["errors"]))},
    }


async def _client(url: str, requests: list[bytes], counter, deadline: float, out: dict) -> None:
    """One keep-alive connection sending requests back to back (closed loop)."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        for i in counter:
            if time.monotonic() > deadline:
                return
            began = time.perf_counter()
            status, payload, keep = await _exchange(reader, writer, requests[i % len(requests)])
            _record(out, status, payload, time.perf_counter() - began)
            if not keep:
                return
    except (OSError, asyncio.IncompleteReadError) as exc:
        out["errors"].append(type(exc).__name__)
    finally:
        writer.close()


def load(url: str, texts: list[str], requests: int, concurrency: int, duration_s: float) -> dict:
    """``requests`` POSTs of one message each over ``concurrency`` connections, stopping at ``duration_s``."""
    out = _outcome()
    counter = iter(range(requests))
    encoded = _requests(url.removeprefix("http://").split(":")[0], texts)

    async def run() -> None:
        deadline = time.monotonic() + duration_s
        await asyncio.gather(*(_client(url, encoded, counter, deadline, out) for _ in range(concurrency)))

    began = time.perf_counter()
    asyncio.run(run())
    wall = time.perf_counter() - began
    summary = _summary(out)
    return {
        **summary,
        "error_kinds": sorted(summary["error_kinds"]),
        "seconds": round(wall, 2),
        "requests_per_s": round(len(out["latencies"]) / wall, 1),
        **milliseconds(out["latencies"] or [float("nan")]),
        "routes": out["routes"],
    }


class _Pool:
    """Keep-alive connections to one service: the last idle one if any, else a new one, up to
    ``cap``. One idle for ``IDLE_S`` or closed by the server is dropped, never sent on."""

    def __init__(self, url: str, cap: int) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.host, self.port, self.cap = host, int(port), cap
        self.idle: list[tuple[float, tuple[asyncio.StreamReader, asyncio.StreamWriter]]] = []
        self.open = self.most = 0

    async def get(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        now = time.monotonic()
        while self.idle and (now - self.idle[0][0] > IDLE_S or self.idle[0][1][0].at_eof()):
            self.drop(self.idle.pop(0)[1])
        while self.idle:
            _, connection = self.idle.pop()
            if not connection[0].at_eof():
                return connection
            self.drop(connection)
        if self.open >= self.cap:
            return None
        self.open += 1
        self.most = max(self.most, self.open)
        try:
            return await asyncio.open_connection(self.host, self.port)
        except OSError:
            self.open -= 1
            raise

    def put(self, connection, keep: bool) -> None:
        if keep:
            self.idle.append((time.monotonic(), connection))
        else:
            self.drop(connection)

    def drop(self, connection) -> None:
        self.open -= 1
        connection[1].close()

    def close(self) -> None:
        while self.idle:
            self.drop(self.idle.pop()[1])


async def _scheduled(pool: _Pool, request: bytes, at: float, out: dict) -> None:
    """One open-loop request, its latency counted from its scheduled time ``at``."""
    loop = asyncio.get_running_loop()
    try:
        connection = await pool.get()
        if connection is None:
            out["errors"].append("no_connection")
            return
    except OSError as exc:
        out["errors"].append(type(exc).__name__)
        return
    try:
        status, payload, keep = await asyncio.wait_for(_exchange(*connection, request), REQUEST_TIMEOUT_S)
    except (OSError, asyncio.IncompleteReadError) as exc:  # TimeoutError is an OSError
        pool.drop(connection)
        out["errors"].append("timeout" if isinstance(exc, TimeoutError) else type(exc).__name__)
        return
    now = loop.time()
    pool.put(connection, keep)
    _record(out, status, payload, now - at)
    out["last_answer"] = max(out.get("last_answer", now), now)


def open_loop(
    url: str, texts: list[str], rate: float, requests: int, duration_s: float, max_connections: int, seed: int
) -> dict:
    """Poisson arrivals at ``rate`` req/s for ``duration_s`` (at most ``requests``), each sent at
    its time on a pooled connection whatever the earlier ones are doing."""
    gaps = np.random.default_rng(seed).exponential(1.0 / rate, size=requests + 1)
    times = np.cumsum(gaps)
    count = min(requests, int(np.searchsorted(times, duration_s)))
    window = min(duration_s, float(times[count]))  # to the first arrival not sent
    encoded = _requests(url.removeprefix("http://").split(":")[0], texts)
    out = _outcome()
    lags: list[float] = []

    async def run() -> float:
        loop = asyncio.get_running_loop()
        pool = _Pool(url, max_connections)
        warm = [await pool.get() for _ in range(min(WARM_CONNECTIONS, max_connections))]
        for connection in warm:
            pool.put(connection, True)
        start = loop.time() + 0.05
        tasks = []
        for i in range(count):
            at = start + float(times[i])
            if (delay := at - loop.time()) > 0:
                await asyncio.sleep(delay)
            lags.append(loop.time() - at)
            tasks.append(asyncio.create_task(_scheduled(pool, encoded[i % len(encoded)], at, out)))
        await asyncio.gather(*tasks)
        out["most_connections"] = pool.most
        pool.close()
        return start

    start = asyncio.run(run())
    answered = len(out["latencies"])
    span = max(window, out.get("last_answer", start) - start)
    return {
        "rate_per_s": rate,
        "offered_per_s": round(count / window, 1),
        "achieved_per_s": round(answered / span, 1),
        **_summary(out),
        **milliseconds(out["latencies"] or [float("nan")]),
        "send_lag_p99_ms": round(float(np.percentile(lags, 99)) * 1000, 3) if lags else None,
        "most_connections": out["most_connections"],
        "routes": out["routes"],
        "versions": out["versions"],
        "edge_alone": milliseconds(out["edge_alone"]) if out["edge_alone"] else None,
    }


def open_loop_sweep(url: str, texts: list[str], args) -> list[dict]:
    """One open-loop run per ``--rate``, each with its own seed."""
    return [
        open_loop(url, texts, rate, args.requests, args.duration, args.max_connections, args.seed + i)
        for i, rate in enumerate(args.rate)
    ]


def within_goal(point: dict, p99_ms: float = math.inf) -> bool:
    """No errors, p99 within ``p99_ms``, and the achieved rate within 5 % of the offered one."""
    return (
        point["errors"] == 0
        and point["p99_ms"] <= p99_ms
        and (point["achieved_per_s"] >= (1 - RATE_TOLERANCE) * point["offered_per_s"])
    )


def sweep(bundle: Path, workdir: Path, texts: list[str], args, p99_ms: float) -> dict:
    """The open-loop runs, one per ``--rate``, against one edge service on ``bundle``."""
    process, url = start_service(bundle, "edge", workdir, *EDGE_OPTIONS, *args.edge_options.split())
    try:
        load(url, texts, 200, args.concurrency, args.duration)  # warm-up
        points = open_loop_sweep(url, texts, args)
    finally:
        stop_service(process)
    passing = [point["rate_per_s"] for point in points if within_goal(point, p99_ms)]
    kept_up = [point["rate_per_s"] for point in points if within_goal(point)]
    return {
        "rates": points,
        "highest_rate_within_p99_ms": max(passing, default=None),
        "highest_rate_kept_up": max(kept_up, default=None),  # no errors, achieved within 5 %
    }


def teacher_edge(edge_only: Path, workdir: Path) -> Path:
    """``edge_only`` with the FP32 teacher quantized to INT8 as its edge model, on its own tokenizer."""
    directory = workdir / "teacher-edge"
    directory.mkdir()
    model, tokenizer = teacher_int8(edge_only, directory)
    return derive_bundle(
        load_bundle(edge_only), directory / "bundle",
        replace={EDGE_MODEL: model, EDGE_TOKENIZER: tokenizer},
        metrics={}, lineage={"edge_model": "teacher_int8"},
    )  # fmt: skip


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
            bundle, "edge", workdir, *EDGE_OPTIONS, *args.edge_options.split(), *options
        )
        started.append(process)
        load(url, texts, 200, args.concurrency, args.duration)  # warm-up
        return load(url, texts, args.requests, args.concurrency, args.duration)
    finally:
        for process in reversed(started):
            stop_service(process)


def rates(text: str) -> list[float]:
    """``--rate`` values: one number or a comma list, each above zero."""
    values = [float(part) for part in text.split(",") if part.strip()]
    if not values or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"rates must be above zero: {text!r}")
    return values


def running_service(args) -> dict:
    """The open-loop runs against a service already running at ``args.url``."""
    try:
        httpx.get(f"{args.url}/readyz", timeout=5).raise_for_status()
    except httpx.HTTPError as exc:
        raise SystemExit(f"--url {args.url}: no edgeroute service ready there ({exc})") from None
    texts = messages(args.bundle)
    return {"url": args.url, "open_loop": open_loop_sweep(args.url, texts, args), "goals": GOALS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", type=Path, help="the bundle to serve (and whose messages to send)")
    parser.add_argument(
        "--url",
        help="load this running service instead, open loop at each --rate, starting nothing "
        "(e.g. across promotions and rollbacks); messages from --bundle, else generated",
    )
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds, at most, per scenario")
    parser.add_argument("--escalate", type=float, default=0.1, help="share of messages sent to the cloud")
    parser.add_argument("--edge-options", default="", help="more `edgeroute serve` options for the edge")
    parser.add_argument(
        "--rate",
        type=rates,
        action="append",
        default=[],
        help="open-loop sweep: requests/s, repeatable or a comma list (100,200,400)",
    )
    parser.add_argument(
        "--max-connections",
        type=int,
        default=256,
        help="open loop: most connections at once; a request past them is an error",
    )
    parser.add_argument("--seed", type=int, default=42, help="open loop: the inter-arrival times")
    parser.add_argument(
        "--teacher-edge",
        action="store_true",
        help="open loop: also sweep with the FP32 teacher quantized to INT8 as the edge",
    )
    parser.add_argument("--save", action="store_true")
    args = parser.parse_args()
    args.rate = sorted({rate for values in args.rate for rate in values})
    if args.url is not None:
        if not args.rate:
            parser.error("--url needs --rate")
        emit("load", running_service(args), args.save)
        return
    if args.bundle is None:
        parser.error("give --bundle (or --url)")
    if args.teacher_edge and not args.rate:
        parser.error("--teacher-edge needs --rate")
    if args.teacher_edge and not load_bundle(args.bundle).has(CLOUD_MODEL):
        parser.error(f"--teacher-edge: {args.bundle} has no {CLOUD_MODEL}")
    texts = messages(args.bundle)
    load_average = [round(os.getloadavg()[0], 2)]  # other work on the machine skews every figure
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
        if args.rate:
            report["open_loop"] = {
                "rates_per_s": args.rate,
                "duration_s": args.duration,
                "max_connections": args.max_connections,
                "seed": args.seed,
                "student": sweep(edge_only, workdir, texts, args, GOALS["p99_ms"]),
            }
            if args.teacher_edge:
                teacher = teacher_edge(edge_only, workdir)
                report["open_loop"]["teacher_int8"] = sweep(teacher, workdir, texts, args, GOALS["p99_ms"])
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
    if "teacher_int8" in (sweeps := report.get("open_loop", {})):
        student, teacher = (
            sweeps[name]["highest_rate_within_p99_ms"] for name in ("student", "teacher_int8")
        )
        report["ratios"]["open_loop_student_vs_teacher_int8_highest_rate"] = (
            round(student / teacher, 2) if student and teacher else None
        )
        first = {name: sweeps[name]["rates"][0] for name in ("student", "teacher_int8")}
        report["ratios"]["open_loop_student_vs_teacher_int8_p99_at_lowest_rate"] = round(
            first["student"]["p99_ms"] / first["teacher_int8"]["p99_ms"], 2
        )
    report["load_average_1min"] = {"start": load_average[0], "end": round(os.getloadavg()[0], 2)}
    report["goals"] = GOALS
    emit("load", report, args.save)


if __name__ == "__main__":
    main()
