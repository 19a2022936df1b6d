"""Other users' latency while one client sends the texts that cost masking the most. Prints one
JSON object.

    .venv/bin/python -m bench.maskload --bundle work/bundles/<run id> [--rate 50] [--duration 20]
        [--attackers 2] [--save]

Two runs of the same open-loop load (``bench.load.open_loop``: Poisson arrivals of the bundle's
messages at ``--rate`` req/s for ``--duration`` s, latency from each request's scheduled time)
against one edge service that keeps the masked text of every request
(``audit.keep_text=masked``, so every text is masked, escalated or not):

- ``quiet``: the load alone;
- ``attacked``: the same load while ``--attackers`` clients send, back to back, the adversarial
  text of `bench.masking` that the regex engine takes longest on (4,000 characters, the limit).

Per run: the other users' latency and errors; for the attacked run, the attackers' requests and
their latency. ``ratios.others_p99_attacked_vs_quiet`` is the figure issue 31 asked for.
``--save`` also writes ``bench/results/maskload.json``.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

import httpx

from bench.common import emit, messages, milliseconds, start_service, stop_service
from bench.load import open_loop
from bench.masking import ADVERSARIAL, ms_per_kb
from edgeroute.privacy import find, mask


def attack(url: str, text: str, stop: threading.Event, seen: list[float], errors: list[int]) -> None:
    """Post ``text`` back to back until ``stop``, keeping each answer's latency or error status."""
    with httpx.Client(timeout=60) as client:
        while not stop.is_set():
            started = time.perf_counter()
            response = client.post(f"{url}/v1/classify", json={"text": text})
            if response.status_code == 200:
                seen.append(time.perf_counter() - started)
            else:
                errors.append(response.status_code)


def run(url: str, texts: list[str], args, worst: str | None) -> dict:
    open_loop(url, texts, args.rate, 100, 2.0, args.max_connections, args.seed)  # warm-up
    stop, seen, errors = threading.Event(), [], []
    attackers = [
        threading.Thread(target=attack, args=(url, worst, stop, seen, errors), daemon=True)
        for _ in range(args.attackers if worst else 0)
    ]
    for thread in attackers:
        thread.start()
    try:
        point = open_loop(url, texts, args.rate, int(args.rate * args.duration), args.duration,
                          args.max_connections, args.seed)  # fmt: skip
    finally:
        stop.set()
        for thread in attackers:
            thread.join()
    if worst:
        point["attackers"] = {"requests": len(seen) + len(errors), "errors": len(errors),
                              **(milliseconds(seen) if seen else {})}  # fmt: skip
    return point


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--rate", type=float, default=50.0, help="the other users' requests per second")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per run")
    parser.add_argument("--attackers", type=int, default=2, help="clients sending the costly text")
    parser.add_argument("--max-connections", type=int, default=256)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--save", action="store_true")
    args = parser.parse_args()
    costs = {name: ms_per_kb(lambda text: mask(text, find), text) for name, text in ADVERSARIAL.items()}
    worst = max(costs, key=costs.get)
    texts = messages(args.bundle)
    report: dict = {"bundle": str(args.bundle), "rate_per_s": args.rate, "duration_s": args.duration,
                    "attackers": args.attackers, "attack_text": worst,
                    "attack_text_mask_ms_per_kb": round(costs[worst], 2)}  # fmt: skip
    with tempfile.TemporaryDirectory() as scratch:
        process, url = start_service(args.bundle, "edge", Path(scratch), "--set", "audit.keep_text=masked")
        try:
            report["quiet"] = run(url, texts, args, None)
            report["attacked"] = run(url, texts, args, ADVERSARIAL[worst])
        finally:
            stop_service(process)
    quiet, attacked = (report[name]["p99_ms"] for name in ("quiet", "attacked"))
    report["ratios"] = {"others_p99_attacked_vs_quiet": round(attacked / quiet, 2)}
    emit("maskload", report, args.save)


if __name__ == "__main__":
    main()
