"""What a killed run leaves behind, cleaned up by the next one on the same work directory."""

from __future__ import annotations

import shutil

from prefect import get_run_logger, task

from edgeroute.files import staging_of
from tasks.support import tracking
from tasks.support.config import PipelineConfig


def clean_up(config: PipelineConfig) -> list[str]:
    """Mark the experiment's orphaned pipeline runs FAILED and remove their working files (the
    compressed and calibration folders, a half-written bundle); the orphans' run ids."""
    orphans = tracking.fail_orphaned_runs(config.tracking.experiment)
    work = config.work_dir.resolve()
    for run_id in orphans:
        leftovers = [work / "compress" / run_id, work / "calibrate" / run_id]
        for path in [*leftovers, *staging_of(work / "bundles" / run_id)]:
            shutil.rmtree(path, ignore_errors=True)
    return orphans


@task(name="clean-up-killed-runs")
def clean_up_killed_runs(config: PipelineConfig) -> list[str]:
    """Prefect task: `clean_up`, each orphan named in the log."""
    orphans = clean_up(config)
    for run_id in orphans:
        get_run_logger().warning("MLflow run %s was left RUNNING by a killed process: marked FAILED", run_id)
    return orphans
