"""The MLflow model registry: the bundle as a pyfunc model, aliases, promotion and rollback.

A registered version's artifacts are the bundle itself, so what the registry serves is what
was gated and calibrated, hashes and all. The newest version gets the ``challenger`` alias; it
becomes ``champion`` when there is none, or when it is not worse than the champion on the
champion's own test split, or by hand, or when a service's canary holds up on live feedback
(`canary_verdict`). Every version records the champion it replaced, so a rollback needs no
memory beyond the registry, and carries its model card (`model_card`) as its description.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import Model, infer_signature
from prefect import task

from edgeroute.bundle import Bundle, load_bundle
from edgeroute.config import CloudConfig
from tasks.calibrate import evaluate
from tasks.model_card import bundle_data, finite, gate_figures, model_card
from tasks.support import pyfunc_model, synthetic, tracking
from tasks.support.config import GateConfig, PipelineConfig, PromotionConfig
from tasks.support.dataset import PRODUCTION_HOLDOUT, PreparedData
from tasks.support.pyfunc_model import BUNDLE_ARTIFACT, decisions_frame

CHALLENGER, CHAMPION = "challenger", "champion"
HISTORY = "champion_history"
PREVIOUS_CHAMPION = "previous_champion"
MODEL_CODE = Path(pyfunc_model.__file__)


def requirements() -> list[str]:
    """What loading the model needs: the runtime and MLflow, at the versions that logged it."""
    from importlib.metadata import version

    names = (
        "mlflow",
        "numpy",
        "onnxruntime",
        "tokenizers",
        "pandas",
        "pydantic",
        "pyyaml",
        "typer",
        "httpx",
        "tenacity",
    )
    return [f"{name}=={version(name)}" for name in names]


@dataclass(frozen=True)
class Registered:
    name: str
    version: str
    run_id: str


def register_bundle(
    bundle_path: Path, name: str, examples: list[str], gate: GateConfig | None = None
) -> Registered:
    """Log the bundle as a pyfunc model in a ``register`` run, register it, alias it challenger.

    The version's description is its model card (`model_card`), also ``model_card.md`` of the
    run; ``gate`` is what the gates required, where the gate stages' runs do not say.
    """
    bundle = load_bundle(bundle_path)  # refuse an altered bundle before it reaches the registry
    example = pd.DataFrame({"text": examples})
    output = decisions_frame(bundle.router(), examples)
    lineage = {f"lineage.{k}": str(v) for k, v in bundle.manifest["lineage"].items()}
    with tracking.stage("register") as run_id:
        with mlflow.start_run(run_id=run_id):
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=str(MODEL_CODE),
                artifacts={BUNDLE_ARTIFACT: str(bundle_path)},
                signature=infer_signature(example, output),
                input_example=example,
                pip_requirements=requirements(),
                model_config=pyfunc_model.MODEL_CONFIG,
                registered_model_name=name,
            )
        version = str(info.registered_model_version)
        client = tracking.client()
        for key, value in lineage.items():
            client.set_model_version_tag(name, version, key, value)
        client.set_registered_model_alias(name, CHALLENGER, version)
        required = {k: v for k, v in (gate.model_dump() if gate else {}).items() if v is not None}
        figures = required | gate_figures(
            bundle.manifest["lineage"].get("mlflow_run_id") or tracking.pipeline_run_id()
        )
        data = bundle_data(bundle)
        tracking.log_text(run_id, model_card(bundle, data, figures, limit=None), "model_card.md")
        client.update_model_version(name, version, description=model_card(bundle, data, figures))
        tracking.set_tags(run_id, {"registered_model": name, "registered_version": version})
    return Registered(name, version, run_id)


def version_by_alias(name: str, alias: str):
    """The model version holding ``alias``, or None."""
    try:
        return tracking.client().get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def resolve_version(uri: str) -> str:
    """``models:/<name>@<alias>`` or ``models:/<name>/<version>`` as ``<name>/<version>``."""
    name, _, ref = uri.removeprefix("models:/").partition("@")
    if ref:
        return f"{name}/{tracking.client().get_model_version_by_alias(name, ref).version}"
    return uri.removeprefix("models:/")


def version_exists(name: str, version: str) -> bool:
    try:
        tracking.client().get_model_version(name, version)
    except MlflowException:
        return False
    return True


DOWNLOADS = "edgeroute-model-"  # the prefix of a folder download_bundle makes


def download_bundle(uri: str, destination: Path | None = None) -> Path:
    """The bundle behind ``models:/<name>@<alias>`` (or ``/<version>``), downloaded and verified;
    into a new temporary folder without ``destination`` (`remove_download` removes it)."""
    tracking.client()
    target = destination or Path(tempfile.mkdtemp(prefix=DOWNLOADS))
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(target)))
        artifacts = Model.load(local / "MLmodel").flavors["python_function"]["artifacts"]
        bundle = local / artifacts[BUNDLE_ARTIFACT]["path"]
        load_bundle(bundle)
    except BaseException:
        if destination is None:  # a download that cannot be served leaves nothing behind
            shutil.rmtree(target, ignore_errors=True)
        raise
    return bundle


def remove_download(bundle: Path) -> None:
    """The temporary folder `download_bundle` made for ``bundle`` removed; any other left alone."""
    temporary = Path(tempfile.gettempdir()).resolve()
    for folder in bundle.resolve().parents:
        if folder.parent == temporary and folder.name.startswith(DOWNLOADS):
            shutil.rmtree(folder, ignore_errors=True)
            return


def registered_router(uri: str, cloud: CloudConfig | None = None):
    """The router of a registered bundle, downloaded and verified, escalating to ``cloud``'s
    backend (default: the bundle's own FP32 model)."""
    bundle = load_bundle(download_bundle(uri))
    remote = cloud is not None and cloud.backend != "local"
    return bundle.router(bundle.remote_cloud(cloud) if remote else None)


def champion_history(name: str) -> list[str]:
    """The versions that were champion, oldest first, ending with the current one: a registered
    model tag, kept across promotions by hand. An alias moved elsewhere (the MLflow UI) or a
    registry from before the history was kept is taken in as it is."""
    model = tracking.client().get_registered_model(name)
    current = version_by_alias(name, CHAMPION)
    history = json.loads(model.tags[HISTORY]) if HISTORY in model.tags else []
    if current is None:
        return history
    if not history and current.tags.get(PREVIOUS_CHAMPION):
        history = [current.tags[PREVIOUS_CHAMPION]]
    return history if history[-1:] == [str(current.version)] else [*history, str(current.version)]


def _move_champion(name: str, version: str, history: list[str]) -> None:
    client = tracking.client()
    client.set_registered_model_tag(name, HISTORY, json.dumps(history))
    client.set_registered_model_alias(name, CHAMPION, version)


def set_champion(name: str, version: str, reason: str) -> dict[str, Any]:
    """Move the champion alias to ``version``, recording the version it replaces."""
    client = tracking.client()
    current = version_by_alias(name, CHAMPION)
    if current is not None and str(current.version) == str(version):
        return {"champion": version, "previous": current.tags.get(PREVIOUS_CHAMPION), "reason": reason}
    previous = str(current.version) if current is not None else ""
    history = champion_history(name)
    client.set_model_version_tag(name, version, PREVIOUS_CHAMPION, previous)
    client.set_model_version_tag(name, version, "promotion_reason", reason)
    _move_champion(name, str(version), [*history, str(version)])
    return {"champion": version, "previous": previous or None, "reason": reason}


def rollback(name: str) -> dict[str, Any]:
    """Give the champion alias back to the champion before the current one, walking the history
    back one step each time (never forth again)."""
    current = version_by_alias(name, CHAMPION)
    if current is None:
        raise ValueError(f"registered model {name!r} has no {CHAMPION} to roll back")
    history = champion_history(name)
    if len(history) < 2:
        raise ValueError(
            f"{name} version {current.version} was the first {CHAMPION}; nothing to roll back to"
        )
    _move_champion(name, history[-2], history[:-1])
    return {"champion": history[-2], "rolled_back_from": str(current.version)}


def champion_test_split(champion, fallback: PreparedData) -> tuple[pd.DataFrame, str]:
    """The champion's own test split, found through its data lineage; else the challenger's."""
    data_dir = champion.tags.get("lineage.data_dir")
    if data_dir and (Path(data_dir) / "data.json").is_file():
        return PreparedData.load(Path(data_dir)).frame("test"), data_dir
    return fallback.frame("test"), f"{fallback.directory} (the champion's data is gone)"


def decide(
    name: str,
    challenger: Registered,
    data: PreparedData,
    settings: PromotionConfig,
    run_id: str,
    cloud: CloudConfig | None = None,
) -> dict[str, Any]:
    """Promote the challenger unless it is worse than the champion on the champion's test split,
    or on the production holdout of the challenger's data when it has one, both routed to
    ``cloud`` (default: each bundle's own FP32 model). The verdict names every split judged on."""
    champion = version_by_alias(name, CHAMPION)
    if champion is None:
        return set_champion(name, challenger.version, "first champion") | {"promoted": True}
    test, source = champion_test_split(champion, data)
    judged = {"test": (test, source)}
    if data.path(PRODUCTION_HOLDOUT).is_file():
        judged[PRODUCTION_HOLDOUT] = (
            data.frame(PRODUCTION_HOLDOUT),
            f"the production holdout of {data.directory}",
        )
    routers = {
        role: registered_router(f"models:/{name}/{version}", cloud)
        for role, version in ((CHAMPION, champion.version), (CHALLENGER, challenger.version))
    }
    scores = {
        split: {role: evaluate(router, frame)[settings.metric] for role, router in routers.items()}
        for split, (frame, _) in judged.items()
    }
    tracking.log_metrics(
        run_id,
        {
            f"{role}_{settings.metric}" if split == "test" else f"{role}_{split}_{settings.metric}": score
            for split, by_role in scores.items()
            for role, score in by_role.items()
        },
    )
    promoted = all(s[CHALLENGER] >= s[CHAMPION] - settings.tolerance for s in scores.values())
    verdict = "; ".join(
        f"{settings.metric} {s[CHALLENGER]:.4f} vs champion v{champion.version} {s[CHAMPION]:.4f} "
        f"(tolerance {settings.tolerance:g}) on {judged[split][1]}"
        for split, s in scores.items()
    )
    result = {
        "promoted": promoted,
        "champion": str(champion.version),
        "scores": scores["test"],
        "reason": verdict,
    }
    if PRODUCTION_HOLDOUT in scores:
        result[f"{PRODUCTION_HOLDOUT}_scores"] = scores[PRODUCTION_HOLDOUT]
    if promoted:
        result |= set_champion(name, challenger.version, verdict)
    return result


@dataclass(frozen=True)
class CanaryRule:
    """When a canary's live feedback makes it champion (`edgeroute promote --from-canary`): both
    it and the champion have ``min_feedback`` labelled requests in the monitor window, from
    ``min_sources`` feedback sources (feedback keys) or more, none of which gave more than
    ``max_source_share`` of a version's labels, so that one key cannot decide alone; and the
    canary's accuracy from feedback is at least the champion's minus ``tolerance``."""

    min_feedback: int = 200
    tolerance: float = 0.01
    min_sources: int = 2
    max_source_share: float = 0.8


def canary_verdict(report: Mapping[str, Any], rule: CanaryRule = CanaryRule()) -> tuple[bool, str]:
    """Whether a service's health report (``GET /v1/health``) shows its canary fit to be champion
    by ``rule``, and why."""
    min_feedback, tolerance = rule.min_feedback, rule.tolerance
    champion = report.get("model_version")
    canary = (report.get("canary") or {}).get("model_version")
    if not canary:
        return False, f"the service serves no canary (champion {champion or '?'})"
    if canary == champion:
        return False, f"the canary {canary} is the champion already"
    versions = report.get("versions") or {}
    live = {
        role: versions.get(version) or {} for role, version in (("canary", canary), ("champion", champion))
    }
    labelled = {role: int(finite(stats.get("labelled")) or 0) for role, stats in live.items()}
    accuracy = {role: finite(stats.get("accuracy")) for role, stats in live.items()}
    named = {"canary": f"canary {canary}", "champion": f"champion {champion}"}
    short = [
        f"{named[role]} {labelled[role]} of {min_feedback} labelled"
        + (", no accuracy" if accuracy[role] is None and labelled[role] >= min_feedback else "")
        for role in ("canary", "champion")
        if labelled[role] < min_feedback or accuracy[role] is None
    ]
    window = finite(report.get("window_s"))
    over = f" over the last {window:.0f} s" if window else ""
    if short:
        return False, f"not enough feedback yet{over} ({'; '.join(short)})"
    sources = {role: _counts(stats.get("feedback_sources")) for role, stats in live.items()}
    narrow = [
        f"{named[role]} from {len(sources[role])} ({', '.join(f'{s} {n}' for s, n in sources[role].items())})"
        for role in ("canary", "champion")
        if len(sources[role]) < rule.min_sources
        or max(sources[role].values(), default=0) > rule.max_source_share * sum(sources[role].values())
    ]
    if narrow:
        return False, (
            f"feedback from too few sources{over} ({'; '.join(narrow)}): promotion needs feedback "
            f"from {rule.min_sources} sources or more, none with over {rule.max_source_share:.0%} "
            "of a version's labels"
        )
    promoted = accuracy["canary"] >= accuracy["champion"] - tolerance - 1e-12  # 1e-12: float rounding
    return promoted, (
        f"live accuracy{over}: {named['canary']} {accuracy['canary']:.4f} ({labelled['canary']} labelled) "
        f"{'>=' if promoted else '<'} {named['champion']} {accuracy['champion']:.4f} "
        f"({labelled['champion']} labelled) - tolerance {tolerance:g}"
    )


def _counts(sources: Any) -> dict[str, int]:
    """A health report's ``feedback_sources`` (absent from a service older than sources: none)."""
    counts = sources if isinstance(sources, Mapping) else {}
    return {str(s): int(count) for s, n in counts.items() if (count := finite(n) or 0) > 0}


@task(name="fetch-bundle", retries=2, retry_delay_seconds=5)
def fetch_bundle(reference: str) -> Bundle:
    """Prefect task: a registered bundle (``models:/<name>@<alias>``) downloaded, or a bundle
    directory; verified either way."""
    if reference.startswith("models:/"):
        return load_bundle(download_bundle(reference))
    return load_bundle(Path(reference))


@task(name="register")
def register_model(config: PipelineConfig, bundle_path: Path) -> Registered:
    """Prefect task: the bundle into the registry as the new challenger.

    The input example MLflow keeps beside the model is generated, never a message of the data.
    """
    examples = [row["text"] for row in synthetic.generate(3, seed=config.seed)]
    return register_bundle(bundle_path, config.tracking.registered_model, examples, config.gate)


@task(name="promote")
def promote_model(config: PipelineConfig, data: PreparedData, registered: Registered) -> dict[str, Any]:
    """Prefect task: promote or keep the champion; the decision and both scores go to MLflow."""
    with tracking.stage("promote", config.promotion) as run_id:
        decision = decide(registered.name, registered, data, config.promotion, run_id, config.cloud_cached)
        tracking.set_tags(run_id, {"promoted": decision["promoted"], "decision": decision["reason"]})
    return decision
