"""What the bench scripts share: the machine they ran on, the messages, timing, services, output."""

from __future__ import annotations

import json
import os
import platform
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import httpx
import numpy as np

from edgeroute.bundle import load_bundle
from edgeroute.tables import read_messages

BIN = Path(sys.executable).parent
RESULTS = Path(__file__).parent / "results"


def machine() -> dict:
    """The CPU, core count and library versions: figures mean little without them."""
    import onnxruntime

    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    fields = dict(line.split(":", 1) for line in cpuinfo.splitlines() if ":" in line)
    fields = {key.strip(): value.strip() for key, value in fields.items()}
    flags = set(fields.get("flags", "").split())
    return {
        "cpu": fields.get("model name", platform.processor()),
        "int8_instructions": sorted(flags & {"avx2", "avx512_vnni", "avx_vnni", "amx_int8"}),
        "cpus": os.cpu_count(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
    }


def references(bundle_path: Path, workdir: Path, *, threads: int, batch_size: int = 32) -> dict:
    """The same-run baselines of a distilled edge model: the bundle's FP32 teacher (the cloud
    tier) and that teacher quantized as the edge would serve it without distillation.

    Empty for a bundle without a cloud model.
    """
    from edgeroute.bundle import CLOUD_MODEL
    from edgeroute.model import OnnxClassifier, load_tokenizer

    bundle = load_bundle(bundle_path)
    if not bundle.has(CLOUD_MODEL):
        return {}
    teacher = bundle.classifier(CLOUD_MODEL, threads=threads, batch_size=batch_size)
    int8, tokenizer_path = teacher_int8(bundle_path, workdir)
    tokenizer = load_tokenizer(tokenizer_path, bundle.manifest["max_length"])
    twin = OnnxClassifier(int8, tokenizer, bundle.labels, threads=threads, batch_size=batch_size)
    return {"teacher_int8": twin, "teacher_fp32": teacher}


def teacher_int8(bundle_path: Path, workdir: Path) -> tuple[Path, Path]:
    """The bundle's FP32 cloud model fused and quantized with dynamic INT8, as the edge served it
    before distillation and static INT8 (written under ``workdir``), and the tokenizer it takes:
    the cloud's own when the bundle has one."""
    from edgeroute.bundle import CLOUD_MODEL, TOKENIZER
    from tasks.compress import Recipe, fuse_graph, quantize

    fused = fuse_graph(bundle_path / CLOUD_MODEL, workdir / "teacher-fused.onnx")
    int8 = quantize(fused, workdir / "teacher-int8.onnx", Recipe("dynamic", True, True, static=False))
    own = bundle_path / "cloud" / TOKENIZER
    return int8, own if own.is_file() else bundle_path / TOKENIZER


def messages(bundle: Path | None, data: Path | None = None, text_column: str = "text") -> list[str]:
    """``data``'s texts; else the bundle's test split while its data is in ``work/``; else generated."""
    import pandas as pd

    if data is not None:
        return read_messages(data, text_column)[0]
    data_dir = Path(load_bundle(bundle).manifest["lineage"].get("data_dir", "")) if bundle else None
    if data_dir is not None and (data_dir / "test.parquet").is_file():
        return pd.read_parquet(data_dir / "test.parquet")["text"].tolist()
    from tasks.support.synthetic import generate

    return [row["text"] for row in generate(1000, seed=3)]


def milliseconds(samples_s: Sequence[float]) -> dict:
    p50, p95, p99 = np.percentile(np.asarray(samples_s) * 1000, [50, 95, 99])
    return {"p50_ms": round(float(p50), 3), "p95_ms": round(float(p95), 3), "p99_ms": round(float(p99), 3)}


def time_calls(
    call: Callable[[str], object], texts: Sequence[str], repeat: int, warmup: int = 20
) -> list[float]:
    """Seconds per ``call(text)``, cycling through ``texts``."""
    for text in texts[:warmup]:
        call(text)
    timings = []
    for i in range(repeat):
        text = texts[i % len(texts)]
        start = time.perf_counter()
        call(text)
        timings.append(time.perf_counter() - start)
    return timings


def interleaved(
    candidates: dict[str, Callable[[str], object]], texts: Sequence[str], repeat: int, rounds: int = 5
) -> dict[str, list[float]]:
    """Time each candidate in turn, ``rounds`` times, so that the machine's slow spells hit all alike."""
    timings: dict[str, list[float]] = {name: [] for name in candidates}
    per_round = max(1, repeat // rounds)
    for r in range(rounds):
        chunk = [texts[(r * per_round + i) % len(texts)] for i in range(per_round)]
        for name, call in candidates.items():
            timings[name] += time_calls(call, chunk, per_round, warmup=5)
    return timings


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_service(
    bundle: Path | str,
    role: str,
    workdir: Path,
    *options: str,
    audit: Path | str | None = None,
    port: int | None = None,
) -> tuple[subprocess.Popen, str]:
    """``edgeroute serve`` of a bundle directory, or a ``models:/`` URI, on 127.0.0.1 ``port``
    (else a free one), once ``/readyz`` answers; its audit trail is ``audit`` (a SQLite file or a
    ``postgresql://`` URL), else one in ``workdir``."""
    port = port or free_port()
    served = ["--model", bundle] if str(bundle).startswith("models:/") else ["--bundle", str(bundle)]
    process = subprocess.Popen(
        [str(BIN / "edgeroute"), "serve", *served, "--role", role, "--port", str(port),
         "--audit", str(audit or workdir / f"{role}-{port}.db"), *options],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return process, url
        except httpx.TransportError:
            time.sleep(0.02)
    stop_service(process)
    raise TimeoutError(f"{role} service on {url} not ready")


def stop_service(process: subprocess.Popen) -> None:
    os.killpg(process.pid, signal.SIGTERM)
    process.wait(timeout=30)


def rss_mb(pid: int) -> float:
    """Resident memory of a process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def emit(name: str, report: dict, save: bool) -> None:
    """Print the report as JSON; with ``save``, also keep it as ``bench/results/<name>.json``."""
    report = {"bench": name, "machine": machine(), **report}
    text = json.dumps(report, indent=2)
    print(text)
    if save:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / f"{name}.json").write_text(text + "\n", encoding="utf-8")
