"""Edge service cold start (process start to ready) and resident memory. Prints JSON.

    .venv/bin/python -m bench.coldstart --bundle work/bundles/<run id> [--runs 5] [--save]

Each run starts ``edgeroute serve`` and times it from process start until ``/readyz`` answers
(the interpreter, the imports, the bundle's checksums, the ONNX sessions, uvicorn), then sends
``--requests`` classify requests and reads the process's resident memory (VmRSS). Candidates:

- ``edge``: the INT8 edge service escalating to a cloud-role service elsewhere (``--cloud-url``;
  nothing listens there: an edge box's own cost, the cloud's is not on it);
- ``edge_with_local_cloud``: the same, with the bundle's FP32 model in-process as its cloud tier;
- ``fp32_edge``, the baseline: the bundle's FP32 model served as the edge model, as it would be
  without compression.

Candidates alternate run by run; medians are reported. ``--save`` writes
``bench/results/coldstart.json``.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import httpx

from bench.common import BIN, emit, free_port, messages, rss_mb
from edgeroute.bundle import CLOUD_MODEL, EDGE_MODEL, TOKENIZER, derive_bundle, load_bundle

NOWHERE = "http://127.0.0.1:9"


def one_run(bundle: Path, workdir: Path, texts: list[str], requests: int, *options: str) -> dict:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    began = time.perf_counter()
    process = subprocess.Popen(
        [str(BIN / "edgeroute"), "serve", "--bundle", str(bundle), "--port", str(port),
         "--audit", str(workdir / f"audit-{port}.db"), *options],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                if process.poll() is not None:
                    raise RuntimeError(f"edgeroute serve exited with {process.returncode}") from None
                time.sleep(0.005)
        ready_s = time.perf_counter() - began
        rss_ready = rss_mb(process.pid)
        with httpx.Client() as client:
            for i in range(requests):
                client.post(f"{url}/v1/classify", json={"text": texts[i % len(texts)]}).raise_for_status()
        return {"ready_s": ready_s, "rss_ready_mb": rss_ready, "rss_after_requests_mb": rss_mb(process.pid)}
    finally:
        process.terminate()
        process.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--save", action="store_true")
    args = parser.parse_args()
    texts = messages(args.bundle)
    with tempfile.TemporaryDirectory() as scratch:
        workdir = Path(scratch)
        source = load_bundle(args.bundle)
        fp32_edge = derive_bundle(
            source, workdir / "fp32-edge",
            replace={EDGE_MODEL: args.bundle / CLOUD_MODEL, TOKENIZER: args.bundle / "cloud" / TOKENIZER},
            metrics={}, lineage={"note": "FP32 served as the edge model: the uncompressed baseline"},
        )  # fmt: skip
        candidates = {
            "edge": (args.bundle, ("--cloud-url", NOWHERE)),
            "edge_with_local_cloud": (args.bundle, ()),
            "fp32_edge": (fp32_edge, ("--cloud-url", NOWHERE)),
        }
        runs: dict[str, list[dict]] = {name: [] for name in candidates}
        for _ in range(args.runs):
            for name, (bundle, options) in candidates.items():
                runs[name].append(one_run(bundle, workdir, texts, args.requests, *options))
    report: dict = {"bundle": str(args.bundle), "runs": args.runs, "requests": args.requests}
    for name, results in runs.items():
        report[name] = {key: round(statistics.median(r[key] for r in results), 3) for key in results[0]} | {
            "ready_s_all": [round(r["ready_s"], 3) for r in results]
        }
    report["ratios"] = {
        "fp32_edge_vs_edge_ready": round(report["fp32_edge"]["ready_s"] / report["edge"]["ready_s"], 2),
        "fp32_edge_vs_edge_rss": round(
            report["fp32_edge"]["rss_after_requests_mb"] / report["edge"]["rss_after_requests_mb"], 2
        ),
    }
    report["goals"] = {"ready_s": 1.0, "rss_mb": 200}
    emit("coldstart", report, args.save)


if __name__ == "__main__":
    main()
