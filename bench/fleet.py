"""Two edge replicas on one Postgres audit trail, through a replica's crash and a database
outage: is every answer in the trail exactly once, and nothing else? Prints one JSON object.

    .venv/bin/python -m bench.fleet --bundle work/bundles/<run id> [--rate 50] [--duration 60]
        [--outage 20] [--save]

Starts a Postgres server (``deployments/postgres.sh``, in a temporary directory) and two
``edgeroute serve`` edge replicas writing its trail as ``edge-1`` and ``edge-2``, each with its
own spool. Sends open-loop Poisson arrivals at ``--rate`` req/s for ``--duration`` seconds to
the two in turn (``bench.load``'s connection pool and raw HTTP client; latency from each
request's scheduled time). Meanwhile, at 1/4 of the duration, replica 2 is SIGKILLed and
restarted on the same port, spool and instance name; at 1/2, Postgres is stopped for
``--outage`` seconds and started again. The client logs each request's replica, status (or
connection error) and the ``request_id`` of a 200 answer. Once the load is over and both
replicas' ``/readyz`` say audit ``written`` (spools flushed), the trail is read back:

- ``trail.answered_200_with_one_row`` / ``answered_200_missing_row``: each 200 answer's
  request id must be in ``decisions`` exactly once (the primary key rules out twice);
- ``trail.rows_not_answered_200``: rows whose request id no 200 answer carried; must be zero.
  Each is listed with its instance and time, e.g. a request in flight when replica 2 was killed;
- ``status_5xx``: all, and those scheduled while Postgres was down (it should answer 200 and spool);
- ``connection_errors``: to replica 2 between its kill and its restart (expected; not 5xx), and
  any others;
- ``latency_ms``: p50/p95/p99 of the 200 answers scheduled before, during and after the outage;
- ``trail.flush_s``: from Postgres back to both replicas' spools written (the load still running).

``events_s`` gives when each fault happened, in seconds from the first request. ``--save`` also
writes ``bench/results/fleet.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import signal
import subprocess
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
import psycopg

from bench.common import emit, free_port, messages, milliseconds, start_service, stop_service
from bench.load import REQUEST_TIMEOUT_S, _exchange, _Pool, _requests
from edgeroute.audit import KEY_ENV

POSTGRES = Path(__file__).resolve().parents[1] / "deployments" / "postgres.sh"
FLUSH_TIMEOUT_S = 120.0  # after the load, how long the replicas get to write their spools


def postgres(action: str, directory: Path, *port: int) -> str:
    """``deployments/postgres.sh start|stop``; what it prints (the server's URL on start)."""
    command = [str(POSTGRES), action, str(directory), *map(str, port)]
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip()


def replica(bundle: Path, workdir: Path, number: int, trail: str, port: int | None = None):
    """Edge replica ``number`` on ``trail`` (and ``port``), with its own spool; it starts even
    while Postgres is away, as a replica restarted during an outage must."""
    return start_service(
        bundle, "edge", workdir,
        "--set", f"audit.instance=edge-{number}",
        "--set", f"audit.spool={workdir / f'spool-{number}.jsonl'}",
        "--set", "audit.start_offline=true",
        audit=trail, port=port,
    )  # fmt: skip


def until(moment: float) -> None:
    time.sleep(max(0.0, moment - time.monotonic()))


def faults(args, restart, replicas: list, cluster: Path, port: int, start: float, events: dict) -> None:
    """On the load's clock: replica 2 SIGKILLed at 1/4 and restarted, Postgres stopped at 1/2 for
    ``--outage`` s, then the wait for both spools to be written. In a thread, beside the load; a
    failure is kept in ``events["failure"]``."""
    try:
        until(start + args.duration / 4)
        events["replica_2_killed"] = time.monotonic()
        os.killpg(replicas[1][0].pid, signal.SIGKILL)
        replicas[1][0].wait()
        replicas[1] = restart()
        events["replica_2_ready"] = time.monotonic()
        until(start + args.duration / 2)
        events["postgres_down"] = time.monotonic()  # `pg_ctl stop -m fast` cuts connections at once
        postgres("stop", cluster)
        until(events["postgres_down"] + args.outage)
        postgres("start", cluster, port)
        events["postgres_up"] = time.monotonic()
        if flushed([url for _, url in replicas]):
            events["spools_written"] = time.monotonic()
    except Exception as exc:  # raised in the main thread, after its `finally` stopped all
        events["failure"] = exc


async def _send(pool: _Pool, request: bytes, at: float, entry: dict) -> None:
    """One open-loop request into its log ``entry``: status and request id, or the error's kind,
    and when it ended (``done``, to tell the kill's errors from others)."""
    loop = asyncio.get_running_loop()
    try:
        connection = await pool.get()
    except OSError as exc:
        entry.update(error=type(exc).__name__, done=loop.time())
        return
    if connection is None:
        entry.update(error="no_connection", done=loop.time())
        return
    try:
        status, payload, keep = await asyncio.wait_for(_exchange(*connection, request), REQUEST_TIMEOUT_S)
    except (OSError, asyncio.IncompleteReadError) as exc:  # TimeoutError is an OSError
        pool.drop(connection)
        entry.update(
            error="timeout" if isinstance(exc, TimeoutError) else type(exc).__name__, done=loop.time()
        )
        return
    entry.update(status=status, done=loop.time(), latency=loop.time() - at)
    pool.put(connection, keep)
    if status == 200:
        entry["request_id"] = json.loads(payload)["results"][0]["request_id"]


def load(urls: list[str], texts: list[str], args, start: float) -> list[dict]:
    """Poisson arrivals from ``start`` (a ``time.monotonic()``, asyncio's clock) for
    ``--duration`` s, to ``urls`` in turn; one log entry per request."""
    gaps = np.random.default_rng(args.seed).exponential(
        1.0 / args.rate, int(2 * args.rate * args.duration) + 10
    )
    offsets = np.cumsum(gaps)
    encoded = _requests("127.0.0.1", texts)
    log: list[dict] = []

    async def run() -> None:
        loop = asyncio.get_running_loop()
        pools = [_Pool(url, args.max_connections) for url in urls]
        tasks = []
        for i, offset in enumerate(offsets[offsets < args.duration]):
            at = start + float(offset)
            if (delay := at - loop.time()) > 0:
                await asyncio.sleep(delay)
            entry = {"replica": i % len(urls) + 1, "at": at}
            log.append(entry)
            tasks.append(
                asyncio.create_task(_send(pools[i % len(urls)], encoded[i % len(encoded)], at, entry))
            )
        await asyncio.gather(*tasks)
        for pool in pools:
            pool.close()

    asyncio.run(run())
    return log


def flushed(urls: list[str]) -> bool:
    """Wait until every replica says its rows are written (its spool empty); False on timeout."""
    deadline = time.monotonic() + FLUSH_TIMEOUT_S
    while time.monotonic() < deadline:
        states = [httpx.get(f"{url}/readyz", timeout=5).json()["audit"] for url in urls]
        if all(state["state"] == "written" and state["spooled_rows"] == 0 for state in states):
            return True
        time.sleep(0.2)
    return False


def latency(log: list[dict], begin: float, end: float) -> dict:
    """The 200 answers' latencies among the requests scheduled in [begin, end)."""
    samples = [entry["latency"] for entry in log if entry.get("status") == 200 and begin <= entry["at"] < end]
    return {"answers": len(samples), **milliseconds(samples or [float("nan")])}


def analyse(log: list[dict], rows: list[tuple], events: dict, start: float, wall_offset: float) -> dict:
    """The trail against the client's log; ``wall_offset`` turns the rows' ``time`` (wall clock)
    into the monotonic clock of the log and the events."""
    answered = Counter(entry["request_id"] for entry in log if "request_id" in entry)
    in_trail = {request_id for request_id, _, _ in rows}
    strays = [
        (request_id, instance, when) for request_id, instance, when in rows if request_id not in answered
    ]
    down, up = events["postgres_down"], events["postgres_up"]
    killed, restarted = events["replica_2_killed"], events["replica_2_ready"]
    statuses = [entry for entry in log if "status" in entry]
    server_errors = [entry for entry in statuses if entry["status"] >= 500]
    errors = [entry for entry in log if "error" in entry]
    during_kill = [e for e in errors if e["replica"] == 2 and killed <= e["done"] and e["at"] <= restarted]
    others = [entry for entry in errors if all(entry is not e for e in during_kill)]
    return {
        "requests": len(log),
        "by_replica": dict(sorted(Counter(f"edge-{entry['replica']}" for entry in log).items())),
        "statuses": dict(sorted(Counter(str(entry["status"]) for entry in statuses).items())),
        "trail": {
            "rows": len(rows),
            "rows_by_instance": dict(sorted(Counter(instance for _, instance, _ in rows).items())),
            "answered_200": len(answered),
            "request_ids_answered_twice": sum(1 for count in answered.values() if count > 1),
            "answered_200_with_one_row": len(answered.keys() & in_trail),
            "answered_200_missing_row": len(answered.keys() - in_trail),
            "rows_not_answered_200": len(strays),
            "rows_not_answered_200_detail": [
                {"request_id": request_id, "instance": instance, "at_s": round(when - wall_offset - start, 3)}
                for request_id, instance, when in strays[:20]
            ],
        },
        "status_5xx": {
            "total": len(server_errors),
            "while_postgres_down": sum(1 for entry in server_errors if down <= entry["at"] < up),
        },
        "connection_errors": {
            "replica_2_kill": dict(Counter(entry["error"] for entry in during_kill)),
            "other": dict(Counter(entry["error"] for entry in others)),
        },
        "latency_ms": {
            "before_outage": latency(log, start, down),
            "during_outage": latency(log, down, up),
            "after_outage": latency(log, up, float("inf")),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", type=Path, required=True, help="the bundle both replicas serve")
    parser.add_argument("--rate", type=float, default=50.0, help="requests/s, both replicas together")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load")
    parser.add_argument(
        "--outage", type=float, default=20.0, help="seconds Postgres is down, from 1/2 of the load"
    )
    parser.add_argument(
        "--max-connections", type=int, default=256, help="per replica; a request past them is an error"
    )
    parser.add_argument("--seed", type=int, default=42, help="the inter-arrival times")
    parser.add_argument("--save", action="store_true")
    args = parser.parse_args()
    if args.rate <= 0 or not 0 < args.outage < args.duration / 2:
        parser.error("--rate must be above 0 and --outage within the second half of --duration")
    os.environ.setdefault(KEY_ENV, secrets.token_hex(32))  # one key for both, as in a fleet
    texts = messages(args.bundle)
    with tempfile.TemporaryDirectory(prefix="edgeroute-fleet-") as scratch:
        workdir = Path(scratch)
        workdir.chmod(0o755)  # as root, the server runs as `postgres`, which must reach its cluster
        cluster, port = workdir / "postgres", free_port()
        trail = postgres("start", cluster, port)
        replicas: list = []
        chaos = None
        try:
            for number in (1, 2):  # one by one, so that a failure stops the one started
                replicas.append(replica(args.bundle, workdir, number, trail))
            urls = [url for _, url in replicas]
            restart_port = int(urls[1].rsplit(":", 1)[1])
            events: dict = {}
            start = time.monotonic() + 0.5  # both threads on one clock: asyncio's is time.monotonic
            wall_offset = time.time() - time.monotonic()
            chaos = threading.Thread(
                target=faults,
                args=(args, lambda: replica(args.bundle, workdir, 2, trail, restart_port),
                      replicas, cluster, port, start, events),
            )  # fmt: skip
            chaos.start()
            log = load(urls, texts, args, start)
            chaos.join()
            if "failure" in events:
                raise events["failure"]
            written = flushed(urls)
            with psycopg.connect(trail) as connection:
                rows = connection.execute("SELECT request_id, instance, time FROM decisions").fetchall()
        finally:
            if chaos is not None:
                chaos.join()  # it may start a replica: stop that one too
            for process, _ in replicas:
                if process.poll() is None:
                    stop_service(process)
            postgres("stop", cluster)
    report = {
        "bundle": str(args.bundle),
        "rate_per_s": args.rate,
        "duration_s": args.duration,
        "outage_s": args.outage,
        "seed": args.seed,
        "events_s": {name: round(moment - start, 3) for name, moment in events.items()},
        **analyse(log, rows, events, start, wall_offset),
    }
    flush_s = events["spools_written"] - events["postgres_up"] if "spools_written" in events else None
    report["trail"] |= {"flushed": written, "flush_s": flush_s and round(flush_s, 2)}
    trail_report = report["trail"]
    report["checks"] = {
        "one_row_per_200": trail_report["answered_200_missing_row"] == 0 and written,
        "no_row_without_200": trail_report["rows_not_answered_200"] == 0,
        "no_5xx": report["status_5xx"]["total"] == 0,
    }
    emit("fleet", report, args.save)


if __name__ == "__main__":
    main()
