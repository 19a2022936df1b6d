"""The training side's commands of ``edgeroute``: ``train``, ``config``, ``promote`` (a version by
hand, or a service's canary on its live feedback), ``rollback``, and bundles named
``models:/<name>@<alias>``, registered as the ``train`` plugin (`edgeroute.plugins`).
``python -m flows`` runs the same commands without the console script.
"""

from __future__ import annotations

import urllib.error
from pathlib import Path
from typing import Annotated

import typer
from mlflow.exceptions import MlflowException

from edgeroute.bundle import BundleError
from edgeroute.cli import Overrides, fail
from edgeroute.config import ConfigError, redact_password, to_yaml
from edgeroute.plugins import Plugin, PluginError
from flows.training import training_pipeline
from tasks import registry
from tasks.data import DataValidationError
from tasks.gate import GateFailed
from tasks.support.config import load_config
from tasks.support.tracking import tracking_uri

DEFAULT_RULE = registry.CanaryRule()

app = typer.Typer(help="Train, track and register edge/cloud bundles.", no_args_is_help=True)

Preset = Annotated[
    str, typer.Option("--preset", "-p", help="Preset name in deployments/presets, or a YAML path.")
]
RegisteredName = Annotated[str, typer.Option("--name", "-n", help="Registered model name.")]


@app.command("config")
def show_config(preset: Preset = "demo", overrides: Overrides = None) -> None:
    """Validate a preset with its overrides and print the resolved configuration."""
    try:
        typer.echo(to_yaml(load_config(preset, overrides or [])), nl=False)
    except ConfigError as exc:
        raise fail(str(exc), 2) from None


@app.command()
def train(
    preset: Preset = "demo",
    overrides: Overrides = None,
    data: Annotated[str | None, typer.Option(help="Your own CSV, JSONL or Parquet file.")] = None,
    production_trail: Annotated[
        str | None,
        typer.Option(
            help="Learn from a service's audit trail kept with audit.keep_text=masked (data.production)."
        ),
    ] = None,
) -> None:
    """Run the training pipeline flow (Prefect) and print where its outputs are."""
    settings = list(overrides or []) + ([f"data.path={data}"] if data else [])
    settings += [f"data.production.trail={production_trail}"] if production_trail else []
    try:
        load_config(preset, settings)
    except ConfigError as exc:
        raise fail(str(exc), 2) from None
    try:
        result = training_pipeline(preset=preset, overrides=settings)
    except (DataValidationError, ConfigError, GateFailed) as exc:
        raise fail(str(exc), 1) from None
    except MlflowException as exc:
        # Finished stages are cached: once the tracking server is back, the same command resumes.
        raise fail(f"MLflow tracking at {tracking_uri()} failed: {exc.message}", 1) from None
    typer.echo("\n" + result.pop("summary"))
    typer.echo("Outputs")
    for key, value in result.items():
        typer.echo(f"  {key:<20} {value}")


@app.command()
def promote(
    version: Annotated[
        str | None, typer.Argument(metavar="VERSION", help="The model version to make champion.")
    ] = None,
    name: RegisteredName = "edgeroute",
    from_canary: Annotated[
        str | None,
        typer.Option(
            "--from-canary",
            metavar="URL",
            help="Instead of VERSION: the canary of the edge service at URL, when its live accuracy "
            "from feedback (GET URL/v1/health) holds up against the champion's; or of a whole fleet, "
            "when URL is the audit trail its services write (postgresql://…, or a SQLite file).",
        ),
    ] = None,
    min_feedback: Annotated[
        int, typer.Option(min=1, help="With --from-canary: labelled requests each version needs.")
    ] = DEFAULT_RULE.min_feedback,
    tolerance: Annotated[
        float,
        typer.Option(min=0.0, max=1.0, help="With --from-canary: how far below the champion's it may be."),
    ] = DEFAULT_RULE.tolerance,
    min_sources: Annotated[
        int,
        typer.Option(min=1, help="With --from-canary: feedback sources (keys) each version's labels need."),
    ] = DEFAULT_RULE.min_sources,
    max_source_share: Annotated[
        float,
        typer.Option(
            min=0.0, max=1.0, help="With --from-canary: most of a version's labels one source gives."
        ),
    ] = DEFAULT_RULE.max_source_share,
) -> None:
    """Make a registered version the champion: by hand, or the canary of a running service on its
    live feedback (the one it replaces is recorded either way)."""
    if (version is None) == (from_canary is None):
        raise fail("give the VERSION to promote, or --from-canary URL (one of them)", 2)
    reason = "promoted by hand"
    if from_canary is not None:
        rule = registry.CanaryRule(min_feedback, tolerance, min_sources, max_source_share)
        version, reason = canary_to_promote(from_canary, name, rule)
    elif not registry.version_exists(name, version):
        raise fail(f"registered model {name!r} has no version {version}", 1)
    result = registry.set_champion(name, version, reason)
    typer.echo(f"{name}: champion is now version {result['champion']} (was {result['previous'] or 'none'})")
    if from_canary is not None:
        typer.echo(reason)


def canary_to_promote(url: str, name: str, rule: registry.CanaryRule) -> tuple[str, str]:
    """The version of the canary at ``url`` and why it is promoted; exit 1 when it is not."""
    from tasks.monitoring import read_health

    shown = redact_password(url)  # the reason is kept in the registry: never a password
    # A fleet's trail knows which versions answered, not which is the champion: the registry does.
    fleet = not url.startswith(("http://", "https://"))
    champion = registry.resolve_version(f"models:/{name}@champion") if fleet else None
    try:
        report = read_health.fn(url, champion=champion)  # the task's body: one attempt, no Prefect run
    except urllib.error.HTTPError as exc:
        hint = " (is EDGEROUTE_API_KEY set to the service's key?)" if exc.code in (401, 403) else ""
        raise fail(f"cannot read the health report of {shown}: {exc}{hint}", 1) from None
    except (OSError, ValueError) as exc:
        raise fail(f"cannot read the health report of {shown}: {exc}", 1) from None
    canary = str((report.get("canary") or {}).get("model_version") or "")
    canary_name, _, version = canary.rpartition("/")
    if canary and canary_name != name:
        raise fail(f"the canary of {shown} is {canary}, not a version of {name!r}", 1)
    if canary and not registry.version_exists(name, version):
        raise fail(f"registered model {name!r} has no version {version} (the canary of {shown})", 1)
    promoted, verdict = registry.canary_verdict(report, rule)
    if not promoted:
        raise fail(f"{name}: canary not promoted: {verdict}", 1)
    return version, f"canary of {shown}: {verdict}"


@app.command()
def rollback(name: RegisteredName = "edgeroute") -> None:
    """Give the champion alias back to the version the current champion replaced."""
    try:
        result = registry.rollback(name)
    except ValueError as exc:
        raise fail(str(exc), 1) from None
    champion, before = result["champion"], result["rolled_back_from"]
    typer.echo(f"{name}: champion is now version {champion} (rolled back from {before})")


def resolve_model(uri: str) -> tuple[Path, str | None]:
    """A registered bundle (``models:/<name>@<alias>`` or ``/<version>``), downloaded; its version."""
    try:
        version = registry.resolve_version(uri)  # then that version: the alias may move meanwhile
        return registry.download_bundle(f"models:/{version}"), version
    except MlflowException as exc:
        raise PluginError(exc.message) from None
    except BundleError as exc:  # altered, or unsigned where a signature is required
        raise PluginError(str(exc)) from None


plugin = Plugin(
    commands=app,
    resolve_model=resolve_model,
    lookup_model=registry.resolve_version,
    forget_model=registry.remove_download,
)
