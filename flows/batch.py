"""Route a large store of messages in partitions on Dask: per-message decisions and a summary."""

from __future__ import annotations

from pathlib import Path

from prefect import flow
from prefect_dask import DaskTaskRunner

from tasks.batch import discard_partitions, partition_messages, route_partition_task, summarize_routing
from tasks.registry import fetch_bundle


@flow(name="route-partitions")
def route_partitions(
    bundle_path: Path, partitions: list[Path], directory: Path, settings: tuple[str, ...] = ()
) -> list[Path]:
    """Every partition as its own task; the task runner decides where each one runs."""
    futures = [
        route_partition_task.submit(bundle_path, part, directory / "decisions" / part.name, settings)
        for part in partitions
    ]
    return [future.result() for future in futures]


def dask_runner(address: str | None, n_workers: int) -> DaskTaskRunner:
    """An existing Dask scheduler, or a LocalCluster of single-threaded worker processes."""
    if address:
        return DaskTaskRunner(address=address)
    return DaskTaskRunner(
        cluster_kwargs={"n_workers": n_workers, "threads_per_worker": 1, "dashboard_address": None}
    )


@flow(name="route-messages")
def route_messages(
    data_path: str,
    output_dir: str,
    model: str = "models:/edgeroute@champion",
    text_column: str = "text",
    rows_per_partition: int = 10_000,
    dask_address: str | None = None,
    n_workers: int = 2,
    per_month: int = 1_000_000,
    settings: list[str] | None = None,
) -> dict:
    """Route every message of ``data_path`` with a registered bundle (or a bundle directory);
    ``settings`` are serve-config overrides for the router, e.g. ``cloud.backend=openai``."""
    bundle = fetch_bundle(model)
    directory = Path(output_dir).resolve()
    partitions = partition_messages(
        Path(data_path), text_column, rows_per_partition, directory / "partitions"
    )
    runner = dask_runner(dask_address, n_workers)
    try:
        routed = route_partitions.with_options(task_runner=runner)(
            bundle.path, partitions, directory, tuple(settings or ())
        )
    finally:  # the partitions hold the texts: they never outlive the run
        discard_partitions(directory / "partitions")
    return summarize_routing(routed, bundle.router_settings().costs, per_month, directory / "summary.json")
