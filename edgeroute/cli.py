"""The ``edgeroute`` command line."""

from __future__ import annotations

from typing import Annotated

import typer

from edgeroute.config import ConfigError, load_config, to_yaml

app = typer.Typer(help="Hybrid edge/cloud text classification for customer support.", no_args_is_help=True)

Preset = Annotated[
    str, typer.Option("--preset", "-p", help="Preset name in deployments/presets, or a YAML path.")
]
Overrides = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override one field, e.g. --set classifier.epochs=3 (repeatable)."),
]


def _fail(message: str, code: int) -> typer.Exit:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(code)


@app.command("config")
def show_config(preset: Preset = "demo", overrides: Overrides = None) -> None:
    """Validate a preset with its overrides and print the resolved configuration."""
    try:
        typer.echo(to_yaml(load_config(preset, overrides or [])), nl=False)
    except ConfigError as exc:
        raise _fail(str(exc), 2) from None


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
        raise _fail(str(exc), 2) from None
    try:
        from flows.training import training_pipeline
    except ImportError as exc:
        raise _fail(f"training needs the 'train' extra: pip install 'edgeroute[train]' ({exc})", 2) from None
    from tasks.data import DataValidationError
    from tasks.gate import GateFailed

    try:
        result = training_pipeline(preset=preset, overrides=settings)
    except (DataValidationError, ConfigError, GateFailed) as exc:
        raise _fail(str(exc), 1) from None
    typer.echo("\ntraining-pipeline finished")
    for key, value in result.items():
        typer.echo(f"  {key:<18} {value}")
