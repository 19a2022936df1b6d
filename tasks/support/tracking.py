"""The one place that talks to MLflow: tracking URI, experiments, runs and what they log.

Runs are addressed by explicit run id, never through MLflow's per-thread active run, so
that tasks on a thread pool log to the right run (DESIGN §6).
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import psutil
from mlflow import MlflowClient
from mlflow.entities import DatasetInput, InputTag, Metric, Param, RunStatus, RunTag
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME
from mlflow.utils.time import get_current_time_millis
from pydantic import BaseModel

from edgeroute.config import to_yaml

STORE_DIR = Path("mlflow")
_MAX_PARAM_LENGTH = 6000
_BATCH = 100
_INVALID_KEY = re.compile(r"[^\w\-. :/]")


def local_store_uri(root: Path | None = None) -> str:
    """The default store: ``mlflow/mlflow.db`` (SQLite), artifacts beside it in ``mlflow/artifacts``."""
    return f"sqlite:///{((root or Path.cwd()) / STORE_DIR / 'mlflow.db').resolve()}"


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` when set, else the local SQLite store."""
    return os.environ.get("MLFLOW_TRACKING_URI") or local_store_uri()


def client() -> MlflowClient:
    """A client bound to the tracking URI; also set globally so nothing falls back to ./mlruns."""
    # Bundle downloads are a handful of files: a progress bar per download is only noise in logs.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    uri = tracking_uri()
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    return MlflowClient(tracking_uri=uri)


# What the MLflow 3 UI opens an experiment as: its training runs, not the GenAI (traces) view.
# The tag and the values its UI knows (mlflow/server/js: "genai_development", "custom_model_development").
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")


def experiment_id(name: str) -> str:
    """The id of experiment ``name``, created on first use (artifacts under ``mlflow/artifacts``)."""
    mlflow_client = client()
    experiment = mlflow_client.get_experiment_by_name(name)
    if experiment is not None:
        tag_experiment_kind(mlflow_client, experiment)
        return experiment.experiment_id
    return mlflow_client.create_experiment(
        name, artifact_location=_artifact_location(name), tags=dict([EXPERIMENT_KIND])
    )


def tag_experiment_kind(mlflow_client: MlflowClient, experiment) -> None:
    """Tag an experiment made before the kind was set (or whose kind the UI only inferred);
    a kind someone chose by hand stays."""
    key, value = EXPERIMENT_KIND
    if "inferred" in experiment.tags.get(key, "inferred"):  # unset, "..._inferred", "no_inferred_type"
        mlflow_client.set_experiment_tag(experiment.experiment_id, key, value)


def _artifact_location(experiment: str) -> str | None:
    """Beside a SQLite store, ``artifacts/<experiment>``; a server decides for itself."""
    uri = tracking_uri()
    if not uri.startswith("sqlite:///"):
        return None
    return (Path(uri.removeprefix("sqlite:///")).parent / "artifacts" / experiment).resolve().as_uri()


@contextmanager
def _run(experiment: str, name: str, tags: Mapping[str, str]) -> Iterator[str]:
    mlflow_client = client()
    run = mlflow_client.create_run(experiment, run_name=name, tags=dict(tags))
    run_id = run.info.run_id
    try:
        yield run_id
    except BaseException:
        mlflow_client.set_terminated(run_id, RunStatus.to_string(RunStatus.FAILED))
        raise
    mlflow_client.set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED))


# The pipeline run that stages nest under: set by `pipeline_run` for the flow run's tasks
# (Prefect runs a flow's tasks in copies of its context, so they see it too).
_PIPELINE_RUN: ContextVar[str | None] = ContextVar("edgeroute_pipeline_run", default=None)


OWNER = "edgeroute.process"  # host:pid:start time of the process that runs a pipeline run


def this_process() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{psutil.Process().create_time():.3f}"


def _alive(owner: str) -> bool:
    """Whether the process ``owner`` names still runs (another host's: assumed so)."""
    host, pid, started = owner.rsplit(":", 2)
    if host != socket.gethostname():
        return True
    try:
        return f"{psutil.Process(int(pid)).create_time():.3f}" == started
    except (psutil.NoSuchProcess, ValueError):
        return False


def fail_orphaned_runs(experiment: str) -> list[str]:
    """Mark FAILED the RUNNING pipeline runs of ``experiment`` whose process is gone (a killed
    run never ends its MLflow run), with their RUNNING stage runs; their ids."""
    mlflow_client = client()
    found = mlflow_client.get_experiment_by_name(experiment)
    if found is None:
        return []
    running = mlflow_client.search_runs([found.experiment_id], "attributes.status = 'RUNNING'")
    orphans = [r.info.run_id for r in running if OWNER in r.data.tags and not _alive(r.data.tags[OWNER])]
    for run in running:
        if run.info.run_id in orphans or run.data.tags.get(MLFLOW_PARENT_RUN_ID) in orphans:
            mlflow_client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.FAILED))
    return orphans


@contextmanager
def pipeline_run(experiment: str, name: str, tags: Mapping[str, str] | None = None) -> Iterator[str]:
    """A parent run for one flow run, current inside the block; marked FAILED if the block raises."""
    all_tags = {"git_commit": git_commit() or "unknown", OWNER: this_process()} | dict(tags or {})
    with _run(experiment_id(experiment), name, all_tags) as run_id, current(run_id):
        yield run_id


@contextmanager
def current(run_id: str) -> Iterator[str]:
    """Make ``run_id`` the pipeline run that stages nest under, inside the block."""
    token = _PIPELINE_RUN.set(run_id)
    try:
        yield run_id
    finally:
        _PIPELINE_RUN.reset(token)


def pipeline_run_id() -> str:
    """The current pipeline run (`pipeline_run`, `current`)."""
    run_id = _PIPELINE_RUN.get()
    if run_id is None:
        raise RuntimeError("no current pipeline run: stages run inside tracking.pipeline_run()")
    return run_id


@contextmanager
def stage(name: str, params: BaseModel | Mapping[str, Any] | None = None) -> Iterator[str]:
    """A stage's run, nested under the current pipeline run, with its config section as params."""
    with stage_run(pipeline_run_id(), name) as run_id:
        if params is not None:
            log_params(run_id, params.model_dump(mode="json") if isinstance(params, BaseModel) else params)
        yield run_id


@contextmanager
def stage_run(parent_run_id: str, stage: str) -> Iterator[str]:
    """A run nested under the pipeline run, named after its stage."""
    parent = client().get_run(parent_run_id)
    tags = {MLFLOW_PARENT_RUN_ID: parent_run_id, MLFLOW_RUN_NAME: stage, "stage": stage}
    with _run(parent.info.experiment_id, stage, tags) as run_id:
        yield run_id


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as dotted keys, the way the config is overridden."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, Mapping):
            flat |= flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def log_params(run_id: str, params: Mapping[str, Any]) -> None:
    items = [Param(k, str(v)[:_MAX_PARAM_LENGTH]) for k, v in flatten(params).items()]
    for start in range(0, len(items), _BATCH):
        client().log_batch(run_id, params=items[start : start + _BATCH])


def metric_key(name: str) -> str:
    """A name MLflow accepts: label names such as 'reverted_card_payment?' become part of keys.

    MLflow treats a key as a path: a segment that is empty or only dots ('a//b', 'x/', '../etc')
    is refused, so each such segment becomes underscores.
    """
    segments = _INVALID_KEY.sub("_", name).split("/")
    return "/".join(s if s.strip(".") else "_" * max(len(s), 1) for s in segments)


def log_metrics(run_id: str, metrics: Mapping[str, float], step: int = 0) -> None:
    now = get_current_time_millis()
    items = [Metric(metric_key(k), float(v), now, step) for k, v in metrics.items()]
    for start in range(0, len(items), _BATCH):
        client().log_batch(run_id, metrics=items[start : start + _BATCH])


def set_tags(run_id: str, tags: Mapping[str, str]) -> None:
    client().log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])


def log_artifact(run_id: str, path: Path, artifact_path: str | None = None) -> None:
    client().log_artifact(run_id, str(path), artifact_path)


def log_text(run_id: str, text: str, artifact_file: str) -> None:
    client().log_text(run_id, text, artifact_file)


def log_class_counts(run_id: str, counts: Mapping[str, int]) -> None:
    client().log_text(run_id, json.dumps(dict(counts), indent=2), "class_counts.json")


def log_datasets(run_id: str, splits: Mapping[str, pd.DataFrame], source: str, digest: str) -> None:
    """Each split as an MLflow dataset input, its split name as the context."""
    inputs = []
    for name, frame in splits.items():
        with warnings.catch_warnings():
            # MLflow registers two equivalent local sources ("" and "file") and warns that it
            # picked one of them; either is right for a local path.
            warnings.filterwarnings("ignore", message="The specified dataset source")
            dataset = mlflow.data.from_pandas(
                frame,
                source=f"{source}/{name}.parquet",
                targets="label",
                name=f"data-{digest[:12]}",
            )
        inputs.append(DatasetInput(dataset._to_mlflow_entity(), tags=[InputTag("mlflow.data.context", name)]))
    client().log_inputs(run_id, datasets=inputs)


def log_config(config: BaseModel) -> None:
    """The pipeline config on the current pipeline run: every field a param, and ``config.yaml``."""
    run_id = pipeline_run_id()
    log_params(run_id, config.model_dump(mode="json"))
    log_text(run_id, to_yaml(config), "config.yaml")


def log_stage_summary(run_id: str, stage: str, metrics: Mapping[str, float], tags: Mapping[str, Any]) -> None:
    """A stage's headline metrics and tags on the pipeline run, whether it ran or came from cache."""
    log_metrics(run_id, {f"{stage}.{key}": value for key, value in metrics.items()})
    set_tags(run_id, {f"{stage}.{key}": value for key, value in tags.items()})


def git_commit(directory: Path | None = None) -> str | None:
    """The commit of the checkout the code runs from, if it is one."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=directory or Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() or None
