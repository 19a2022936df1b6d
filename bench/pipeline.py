"""How long the last training pipeline run took, stage by stage, from MLflow. Prints JSON.

    .venv/bin/python -m bench.pipeline [--experiment edgeroute] [--run-id ID] [--save]

Reads the latest finished pipeline run of ``--experiment`` (or ``--run-id``) from the tracking
store (``MLFLOW_TRACKING_URI`` or the local one) and the stage runs nested under it: the demo's
duration against the 15-minute goal, install excluded. The run's start is the flow's start
(after Python and Prefect's start, a few seconds that ``time make demo`` adds). A stage that
came from Prefect's cache took no time and says so. ``--save`` writes
``bench/results/pipeline.json``.
"""

from __future__ import annotations

import argparse

from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from bench.common import emit
from tasks.support import tracking


def minutes(run) -> float:
    return round((run.info.end_time - run.info.start_time) / 60000, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--experiment", default="edgeroute")
    parser.add_argument("--run-id")
    parser.add_argument("--save", action="store_true")
    args = parser.parse_args()
    client = tracking.client()
    experiment = client.get_experiment_by_name(args.experiment)
    if experiment is None:
        raise SystemExit(f"no experiment {args.experiment!r} at {tracking.tracking_uri()}")
    runs = client.search_runs(
        [experiment.experiment_id], "attributes.status = 'FINISHED'", order_by=["attributes.start_time DESC"]
    )
    parents = [
        r for r in runs if MLFLOW_PARENT_RUN_ID not in r.data.tags and r.data.tags.get("stage") is None
    ]
    parent = next((r for r in parents if r.info.run_id == args.run_id), None) if args.run_id else parents[0]
    if parent is None:
        raise SystemExit(f"no finished pipeline run {args.run_id or ''} in {args.experiment!r}")
    stages = sorted(
        (r for r in runs if r.data.tags.get(MLFLOW_PARENT_RUN_ID) == parent.info.run_id),
        key=lambda r: r.info.start_time,
    )
    emit(
        "pipeline",
        {
            "experiment": args.experiment,
            "run_id": parent.info.run_id,
            "run_name": parent.info.run_name,
            "preset": parent.data.params.get("name"),
            "minutes": minutes(parent),
            "stages_minutes": {r.data.tags.get("stage", r.info.run_name): minutes(r) for r in stages},
            "goals": {"minutes": 15},
        },
        args.save,
    )


if __name__ == "__main__":
    main()
