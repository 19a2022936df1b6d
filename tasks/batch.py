"""Batch routing: a store of messages cut into partitions, each routed where Dask puts it.

Partitions are Parquet files of row numbers and texts, removed once routed; each routed
partition is a Parquet file of row numbers and decisions, never the text (decisions go to
audits and dashboards, raw messages stay where they were). The summary is computed from the
decision files alone.
"""

from __future__ import annotations

import json
import shutil
from functools import lru_cache
from pathlib import Path

import pandas as pd
from prefect import task
from prefect.artifacts import create_markdown_artifact

from edgeroute.bundle import edge_cloud_router, load_bundle
from edgeroute.cloud import CircuitBreaker
from edgeroute.config import load_serve_config
from edgeroute.router import Costs, Decision, Router, chunks, project, summarize
from edgeroute.tables import read_messages
from tasks.support import markdown

# What the cloud was sent stays out: the routed table holds no text.
DECISION_COLUMNS = tuple(f for f in Decision.__dataclass_fields__ if f != "masked_text")


def write_partitions(source: Path, text_column: str, rows_per_partition: int, directory: Path) -> list[Path]:
    """Validate the text column and cut the table into Parquet partitions of (row, text)."""
    texts, _ = read_messages(source, text_column)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for number, start in enumerate(range(0, len(texts), rows_per_partition)):
        part = pd.DataFrame({"row": range(start, min(start + rows_per_partition, len(texts)))})
        part["text"] = texts[start : start + len(part)]
        paths.append(directory / f"part-{number:05d}.parquet")
        part.to_parquet(paths[-1], index=False)
    return paths


def discard_partitions(directory: Path) -> None:
    """Remove the partitions, and the texts they hold, once they are routed (or the run failed)."""
    shutil.rmtree(directory, ignore_errors=True)


@lru_cache(maxsize=4)
def _router(bundle_path: str, settings: tuple[str, ...]) -> Router:
    """One router per worker process, bundle and serve-config ``settings``, loaded (and verified) once."""
    serving = load_serve_config(None, list(settings))
    breaker = CircuitBreaker(serving.breaker.failures, serving.breaker.reset_s)
    return edge_cloud_router(load_bundle(Path(bundle_path)), serving, breaker)


def route_partition(bundle_path: Path, partition: Path, output: Path, settings: tuple[str, ...] = ()) -> Path:
    """Route one partition and write its decisions (row numbers, no text) as Parquet;
    ``settings`` are serve-config overrides (``cloud.backend=openai``, ``min_confidence=…``)."""
    frame = pd.read_parquet(partition)
    texts = frame["text"].tolist()
    router = _router(str(bundle_path), tuple(settings))
    decisions = [d for chunk in chunks(texts) for d in router.route(chunk)]
    routed = pd.DataFrame([d.to_dict() for d in decisions], columns=list(DECISION_COLUMNS))
    routed.insert(0, "row", frame["row"].to_numpy())
    output.parent.mkdir(parents=True, exist_ok=True)
    routed.to_parquet(output, index=False)
    return output


def read_decisions(paths: list[Path]) -> list[Decision]:
    frame = pd.concat([pd.read_parquet(p) for p in paths]).sort_values("row")
    records = frame[list(DECISION_COLUMNS)].astype(object).where(frame.notna(), None).to_dict("records")
    return [Decision(**record) for record in records]


def summary_of(paths: list[Path], costs: Costs, per_month: int) -> dict:
    decisions = read_decisions(paths)
    return summarize(decisions, costs) | project(decisions, costs, per_month)


@task(name="partition-messages")
def partition_messages(
    source: Path, text_column: str, rows_per_partition: int, directory: Path
) -> list[Path]:
    """Prefect task: the input cut into partitions."""
    return write_partitions(source, text_column, rows_per_partition, directory)


@task(name="route-partition", retries=1)
def route_partition_task(
    bundle_path: Path, partition: Path, output: Path, settings: tuple[str, ...] = ()
) -> Path:
    """Prefect task: one partition routed, on whichever Dask worker runs it."""
    return route_partition(bundle_path, partition, output, settings)


@task(name="summarize-routing")
def summarize_routing(paths: list[Path], costs: Costs, per_month: int, output: Path) -> dict:
    """Prefect task: the edge/cloud split and projected cost of the whole store, as JSON and artifact."""
    summary = summary_of(paths, costs, per_month)
    output.write_text(json.dumps(summary, indent=2), encoding="utf-8")
    reasons = markdown.table(["reason", "messages"], [[r, f"{n:,}"] for r, n in summary["reasons"].items()])
    create_markdown_artifact(
        key="batch-routing",
        markdown=(
            f"# Batch routing: {summary['queries']:,} messages\n\n"
            f"Edge share **{100 * summary['edge_share']:.1f} %**, cost per message "
            f"${summary['cost_per_query']:.5f} (cloud only ${summary['cloud_only_cost_per_query']:.5f}); "
            f"{summary['per_month']:,} messages a month: ${summary['monthly_cost']:,.0f} "
            f"instead of ${summary['monthly_cloud_only_cost']:,.0f}.\n\n"
            f"{reasons}\n"
        ),
    )
    return summary
