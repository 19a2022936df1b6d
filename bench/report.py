"""The README's Performance table, from the JSON the bench scripts saved (``--save``).

    .venv/bin/python -m bench.report [--check]

Reads ``bench/results/*.json`` and rewrites the table between the ``performance`` markers of
README.md; ``--check`` only says whether the README is up to date (exit 1 if not).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
README = ROOT / "README.md"
START, END = "<!-- performance:start -->", "<!-- performance:end -->"


def load() -> dict[str, dict]:
    return {
        path.stem: json.loads(path.read_text(encoding="utf-8")) for path in sorted(RESULTS.glob("*.json"))
    }


def row(figure: str, goal: str, measured: str, baseline: str, ok: bool, script: str) -> str:
    return f"| {figure} | {goal} | {measured} | {baseline} | {'yes' if ok else '**no**'} | `{script}.py` |"


def latency_rows(r: dict) -> list[str]:
    ours, naive, ratio = r["edgeroute"], r["naive_pad_256"], r["ratios"]["naive_vs_edgeroute_p50"]
    return [
        row("Single query, 1 thread, tokenization included: p50", "≤ 1.0 ms", f"{ours['p50_ms']:.2f} ms",
            f"naive (pad to 256): {naive['p50_ms']:.1f} ms", ours["p50_ms"] <= 1.0, "latency"),
        row("Single query: p95", "≤ 2.0 ms", f"{ours['p95_ms']:.2f} ms", f"naive: {naive['p95_ms']:.1f} ms",
            ours["p95_ms"] <= 2.0, "latency"),
        row(f"Naive / edgeroute, p50 (messages of {r['tokens_p50_p95_max'][0]} word pieces at p50)",
            "≥ 30×", f"{ratio:.1f}×", "", ratio >= 30, "latency"),
    ] + [
        row(f"Student INT8 p50 / {shown} p50", f"≤ {goal}", f"{ratios[key]:.2f}",
            f"{shown}: {r[name]['p50_ms']:.2f} ms", ratios[key] <= goal, "latency")
        for name, shown, goal in (
            ("teacher_int8", "teacher INT8", 0.55), ("teacher_fp32", "teacher FP32", 0.25)
        )
        if (key := f"edgeroute_vs_{name}_p50") in (ratios := r["ratios"])
    ]  # fmt: skip


def throughput_rows(r: dict) -> list[str]:
    best = r["messages_per_s_best_round"]
    fastest = best[r["fastest"]]
    baseline = (
        f"one at a time: {best['one_at_a_time']:,.0f}; unsorted batches: {best['batched_unsorted']:,.0f}"
    )
    rows = [row("Batched throughput, 2 threads", "≥ 1,500 msg/s", f"{fastest:,.0f} msg/s", baseline,
                fastest >= 1500, "throughput")]  # fmt: skip
    if "edgeroute_vs_teacher_int8" in (ratios := r["ratios"]):
        teacher = max(best["teacher_int8_2_threads"], best["teacher_int8_2_workers"])
        rows.append(row("Batched throughput, student INT8 / teacher INT8", "≥ 1.8×",
                        f"{ratios['edgeroute_vs_teacher_int8']:.2f}×", f"teacher INT8: {teacher:,.0f} msg/s",
                        ratios["edgeroute_vs_teacher_int8"] >= 1.8, "throughput"))  # fmt: skip
    return rows


def load_rows(r: dict) -> list[str]:
    edge, unbatched = r["edge_only"], r["edge_only_unbatched"]
    measured = f"{edge['requests_per_s']:,.0f} req/s, p99 {edge['p99_ms']:.0f} ms"
    baseline = (
        f"no micro-batching: {unbatched['requests_per_s']:,.0f} req/s, p99 {unbatched['p99_ms']:.0f} ms"
    )
    rows = [row(f"HTTP service, {r['concurrency']} connections (closed loop), generator on the same cores",
                "≥ 800 req/s, p99 ≤ 20 ms", measured, baseline,
                edge["requests_per_s"] >= 800 and edge["p99_ms"] <= 20, "load")]  # fmt: skip
    sweeps = r.get("open_loop", {})
    if "student" in sweeps:
        best = sweeps["student"]["highest_rate_within_p99_ms"]
        tried = "–".join(f"{rate:g}" for rate in (sweeps["rates_per_s"][0], sweeps["rates_per_s"][-1]))
        teacher = sweeps.get("teacher_int8", {}).get("highest_rate_within_p99_ms", "n/a")
        rows.append(row("HTTP service, open loop (Poisson arrivals): highest rate with p99 ≤ 20 ms",
                        "≥ 800 req/s", f"{best:g} req/s" if best else f"none of {tried} req/s",
                        f"teacher INT8 as the edge: {f'{teacher:g} req/s' if teacher else 'none'}",
                        bool(best) and best >= 800, "load"))  # fmt: skip
    return rows


def coldstart_rows(r: dict) -> list[str]:
    edge, fp32 = r["edge"], r["fp32_edge"]
    rss, fp32_rss = edge["rss_after_requests_mb"], fp32["rss_after_requests_mb"]
    return [
        row("Edge service cold start (process start to ready)", "≤ 1 s", f"{edge['ready_s']:.2f} s",
            f"FP32 edge: {fp32['ready_s']:.2f} s", edge["ready_s"] <= 1.0, "coldstart"),
        row("Edge service resident memory", "≤ 200 MB", f"{rss:.0f} MB", f"FP32 edge: {fp32_rss:.0f} MB",
            rss <= 200, "coldstart"),
    ]  # fmt: skip


def compression_rows(r: dict) -> list[str]:
    out, goals = [], r["goals"]
    smaller, kept = goals["size_reduction_pct"], goals["accuracy_retention_pct"]
    for name, f in r.items():
        if name in {"bench", "machine", "goals"}:
            continue
        size = f"{f['int8_size_mb']:.1f} MB (−{f['size_reduction_pct']:.1f} %)"
        accuracy = f"{f['int8_accuracy']:.4f} ({f['accuracy_retention_pct']:.2f} %)"
        data = f"{name}, {f['classes']} classes, {f['test_messages']:,} test messages"
        out += [
            row(f"Edge INT8 size, {name}", f"≥ {smaller} % smaller", size,
                f"teacher FP32: {f['fp32_size_mb']:.1f} MB", f["size_reduction_pct"] >= smaller,
                "compression"),
            row(f"Edge INT8 accuracy, {data}", f"≥ {kept} % of FP32 teacher", accuracy,
                f"teacher FP32: {f['fp32_accuracy']:.4f}", f["accuracy_retention_pct"] >= kept,
                "compression"),
        ]  # fmt: skip
    return out


def pipeline_rows(r: dict) -> list[str]:
    stages = ", ".join(f"{k} {v:.1f}" for k, v in r["stages_minutes"].items() if v >= 0.1)
    return [row("Demo pipeline (`make demo`, install excluded)", "≤ 15 min", f"{r['minutes']:.1f} min",
                f"stages (min): {stages}", r["minutes"] <= 15, "pipeline")]  # fmt: skip


def slowcloud_rows(r: dict) -> list[str]:
    healthy, dripping = r["healthy"]["edge_alone"], r["dripping"]["edge_alone"]
    ratio, goal = (
        r["ratios"]["edge_alone_p99_dripping_vs_healthy"],
        r["goals"]["edge_alone_p99_dripping_vs_healthy"],
    )
    opened = "open" in r["dripping"]["cloud_circuit_seen_s"]
    return [row(f"Edge-answered p99 while the cloud drips a byte every {r['drip_s']:g} s / healthy cloud "
                f"({r['rate_per_s']:g} req/s, {r['escalate']:.0%} escalated); the circuit opens",
                f"≤ {goal:g}×, opens", f"{ratio:.2f}× ({dripping['p99_ms']:.1f} ms), "
                f"{'opened' if opened else 'never opened'}", f"healthy: {healthy['p99_ms']:.1f} ms",
                ratio <= goal and opened, "slowcloud")]  # fmt: skip


def maskload_rows(r: dict) -> list[str]:
    quiet, attacked = r["quiet"], r["attacked"]
    ratio = r["ratios"]["others_p99_attacked_vs_quiet"]
    return [row(f"Other users' p99 while {r['attackers']} clients send the text costliest to mask "
                f"({r['attack_text_mask_ms_per_kb']:.1f} ms/KB) / alone, {r['rate_per_s']:g} req/s",
                "≤ 2×, no errors", f"{ratio:.2f}× ({attacked['p99_ms']:.0f} ms), {attacked['errors']} errors",
                f"alone: {quiet['p99_ms']:.0f} ms", ratio <= 2 and not attacked["errors"],
                "maskload")]  # fmt: skip


ROWS = {
    "latency": latency_rows,
    "throughput": throughput_rows,
    "load": load_rows,
    "coldstart": coldstart_rows,
    "compression": compression_rows,
    "pipeline": pipeline_rows,
    "slowcloud": slowcloud_rows,
    "maskload": maskload_rows,
}


def table(results: dict[str, dict]) -> str:
    m = next(iter(results.values()))["machine"]
    lines = [
        f"Measured on {m['cpus']} cores of an {m['cpu']} ({', '.join(m['int8_instructions'])}), "
        f"{m['memory_gb']} GB, Python {m['python']}, ONNX Runtime {m['onnxruntime']}; the demo bundle "
        "unless named. Generated by `.venv/bin/python -m bench.report` from `bench/results/`.",
        "",
        "| figure | goal | measured | baseline, same run | met | `bench/` |",
        "|---|---|---|---|---|---|",
    ]
    for name, make in ROWS.items():
        if name in results:
            lines += make(results[name])
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    readme = README.read_text(encoding="utf-8")
    if START not in readme or END not in readme:
        raise SystemExit(f"{README}: no {START} ... {END} markers")
    head, rest = readme.split(START, 1)
    _, tail = rest.split(END, 1)
    updated = f"{head}{START}\n{table(load())}\n{END}{tail}"
    if args.check:
        sys.exit(0 if updated == readme else 1)
    README.write_text(updated, encoding="utf-8")


if __name__ == "__main__":
    main()
