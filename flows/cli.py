"""The training side's commands of ``edgeroute``: ``train``, ``config``, ``promote``, ``rollback``,
and bundles named ``models:/<name>@<alias>``, registered as the ``train`` plugin
(`edgeroute.plugins`). ``python -m flows`` runs the same commands without the console script.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from mlflow.exceptions import MlflowException

from edgeroute.bundle import BundleError
from edgeroute.cli import Overrides, fail
from edgeroute.config import ConfigError, to_yaml
from edgeroute.plugins import Plugin, PluginError
from flows.training import training_pipeline
from tasks import registry
from tasks.data import DataValidationError
from tasks.gate import GateFailed
from tasks.support.config import load_config
from tasks.support.tracking import tracking_uri

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
) -> None:
    """Run the training pipeline flow (Prefect) and print where its outputs are."""
    settings = list(overrides or []) + ([f"data.path={data}"] if data else [])
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
    version: Annotated[str, typer.Argument(help="The model version to make champion.")],
    name: RegisteredName = "edgeroute",
) -> None:
    """Make a registered version the champion by hand (the one it replaces is recorded)."""
    if not registry.version_exists(name, version):
        raise fail(f"registered model {name!r} has no version {version}", 1)
    result = registry.set_champion(name, version, "promoted by hand")
    typer.echo(f"{name}: champion is now version {result['champion']} (was {result['previous'] or 'none'})")


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
        return registry.download_bundle(uri), registry.resolve_version(uri)
    except MlflowException as exc:
        raise PluginError(exc.message) from None
    except BundleError as exc:  # altered, or unsigned where a signature is required
        raise PluginError(str(exc)) from None


plugin = Plugin(commands=app, resolve_model=resolve_model)
