"""The ``edgeroute`` command line."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
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
    from mlflow.exceptions import MlflowException

    from tasks.data import DataValidationError
    from tasks.gate import GateFailed
    from tasks.tracking import tracking_uri

    try:
        result = training_pipeline(preset=preset, overrides=settings)
    except (DataValidationError, ConfigError, GateFailed) as exc:
        raise _fail(str(exc), 1) from None
    except MlflowException as exc:
        # Finished stages are cached: once the tracking server is back, the same command resumes.
        raise _fail(f"MLflow tracking at {tracking_uri()} failed: {exc.message}", 1) from None
    typer.echo("\n" + result.pop("summary"))
    typer.echo("Outputs")
    for key, value in result.items():
        typer.echo(f"  {key:<20} {value}")


BundleOption = Annotated[Path | None, typer.Option("--bundle", "-b", help="A bundle directory.")]
ModelOption = Annotated[
    str | None, typer.Option("--model", "-m", help="A registered bundle: models:/<name>@<alias>.")
]
CloudUrl = Annotated[
    str | None,
    typer.Option(help="Escalate to this cloud-role edgeroute service instead of the bundle's FP32 model."),
]
JsonOption = Annotated[bool, typer.Option("--json", help="One JSON object per line.")]
CHUNK = 512  # texts per router call: bounded memory, one cloud call per chunk


def resolve_bundle(bundle: Path | None, model: str | None) -> tuple[Path, str | None]:
    """The bundle directory, downloaded from the registry for ``--model``; and its registry version."""
    if (bundle is None) == (model is None):
        raise _fail("give a bundle: --bundle DIR or --model models:/<name>@<alias>", 2)
    if model is None:
        return bundle, None
    try:
        from mlflow.exceptions import MlflowException

        from tasks.registry import download_bundle, resolve_version
    except ImportError as exc:
        raise _fail(f"--model needs the 'train' extra (MLflow): {exc}", 2) from None
    try:
        return download_bundle(model), resolve_version(model)
    except MlflowException as exc:
        raise _fail(f"--model {model}: {exc.message}", 2) from None


def open_router(bundle: Path | None, model: str | None, cloud_url: str | None):
    """The router of a bundle given by path or by registered model URI."""
    from edgeroute.bundle import BundleError, load_bundle
    from edgeroute.cloud import CircuitBreaker, GuardedCloud, HttpCloud

    bundle, _ = resolve_bundle(bundle, model)
    try:
        loaded = load_bundle(bundle)
    except BundleError as exc:
        raise _fail(str(exc), 2) from None
    cloud = GuardedCloud(HttpCloud(cloud_url), CircuitBreaker()) if cloud_url else None
    return loaded.router(cloud)


def _chunks(texts: Iterable[str], size: int = CHUNK) -> Iterator[list[str]]:
    chunk: list[str] = []
    for text in texts:
        chunk.append(text)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _read_lines(source: Path) -> Iterator[str]:
    """Non-blank lines of a file or stdin, each decoded on its own so that a bad one is named."""
    stdin = str(source) == "-"
    with sys.stdin.buffer if stdin else source.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                name = "stdin" if stdin else source
                raise _fail(f"{name}: line {number}: not valid UTF-8 ({exc.reason})", 2) from None
            if line.strip():
                yield line.rstrip("\r\n")


def _checked(texts: list[str]) -> list[str]:
    """Texts given as arguments, refused by position when one cannot be routed."""
    from edgeroute.router import unicode_problem

    for i, text in enumerate(texts, start=1):
        problem = "empty text" if not text.strip() else unicode_problem(text)
        if problem:
            raise _fail(f"argument {i}: {problem}", 2)
    return texts


@app.command()
def classify(
    texts: Annotated[
        list[str] | None, typer.Argument(help="Texts to route; none: read lines from stdin.")
    ] = None,
    file: Annotated[Path | None, typer.Option("--file", "-f", help="One text per line; - for stdin.")] = None,
    bundle: BundleOption = None,
    model: ModelOption = None,
    cloud_url: CloudUrl = None,
    as_json: JsonOption = False,
) -> None:
    """Route texts through the edge model, escalating hard ones to the cloud tier."""
    router = open_router(bundle, model, cloud_url)
    if file is not None and not (str(file) == "-" or file.is_file()):
        raise _fail(f"--file {file}: no such file", 2)
    source = _checked(texts) if texts else _read_lines(file if file is not None else Path("-"))
    for chunk in _chunks(source):
        for text, decision in zip(chunk, router.route(chunk), strict=True):
            if as_json:
                typer.echo(json.dumps(decision.to_dict() | {"text": text}))
            else:
                typer.echo(
                    f"{decision.label}\t{decision.confidence:.3f}\t{decision.route}\t{decision.reason}"
                    f"\t${decision.cost:.4f}\t{text}"
                )


@app.command()
def simulate(
    data: Annotated[Path, typer.Option(help="Your messages: CSV, JSONL or Parquet.")],
    per_month: Annotated[
        int, typer.Option(min=1, help="Messages per month, for the projection.")
    ] = 1_000_000,
    text_column: Annotated[str, typer.Option(help="Column holding the message text.")] = "text",
    label_column: Annotated[
        str | None, typer.Option(help="Column of true labels, if any: adds accuracy to the report.")
    ] = None,
    bundle: BundleOption = None,
    model: ModelOption = None,
    cloud_url: CloudUrl = None,
    as_json: JsonOption = False,
) -> None:
    """Route stored messages and project the edge/cloud split and the monthly cost."""
    from edgeroute.router import project, summarize

    texts, labels = _read_messages(data, text_column, label_column)
    router = open_router(bundle, model, cloud_url)
    decisions = [d for chunk in _chunks(texts) for d in router.route(chunk)]
    summary = summarize(decisions, router.settings.costs, labels) | project(
        decisions, router.settings.costs, per_month
    )
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    n, edge = summary["queries"], summary["edge_share"]
    escalated = ", ".join(f"{reason} {count}" for reason, count in summary["reasons"].items())
    typer.echo(f"routed {n:,} messages from {data}")
    typer.echo(f"  edge   {round(edge * n):>9,} ({100 * edge:.1f} %)")
    typer.echo(f"  cloud  {n - round(edge * n):>9,} ({100 * (1 - edge):.1f} %)   reasons: {escalated}")
    typer.echo(
        f"  cost per message   ${summary['cost_per_query']:.5f}   "
        f"(cloud only ${summary['cloud_only_cost_per_query']:.5f})"
    )
    typer.echo(
        f"  per month ({per_month:,} messages): ${summary['monthly_cost']:,.0f} "
        f"vs ${summary['monthly_cloud_only_cost']:,.0f} cloud only: "
        f"saves ${summary['monthly_savings']:,.0f} ({100 * summary['savings_vs_cloud_only']:.1f} %)"
    )
    if labels is not None:
        typer.echo(
            f"  accuracy {summary['accuracy']:.4f} "
            f"(edge-answered {summary['edge_answered_accuracy']:.4f}), labels from {label_column!r}"
        )


def _read_messages(
    path: Path, text_column: str, label_column: str | None
) -> tuple[list[str], list[str] | None]:
    """Texts (and labels) from a user's table, with errors that name the file, row and column."""
    try:
        from tasks.data import DataValidationError, read_messages
    except ImportError as exc:
        raise _fail(f"reading tables needs the 'train' extra (pandas): {exc}", 2) from None
    try:
        frame = read_messages(path, text_column, label_column)
    except DataValidationError as exc:
        raise _fail(str(exc), 1) from None
    texts = frame[text_column].tolist()
    labels = frame[label_column].astype(str).tolist() if label_column else None
    return texts, labels


RegisteredName = Annotated[str, typer.Option("--name", "-n", help="Registered model name.")]


def _registry():
    try:
        from tasks import registry
    except ImportError as exc:
        raise _fail(f"the registry needs the 'train' extra (MLflow): {exc}", 2) from None
    return registry


@app.command()
def promote(
    version: Annotated[str, typer.Argument(help="The model version to make champion.")],
    name: RegisteredName = "edgeroute",
) -> None:
    """Make a registered version the champion by hand (the one it replaces is recorded)."""
    registry = _registry()
    if not registry.version_exists(name, version):
        raise _fail(f"registered model {name!r} has no version {version}", 1)
    result = registry.set_champion(name, version, "promoted by hand")
    typer.echo(f"{name}: champion is now version {result['champion']} (was {result['previous'] or 'none'})")


@app.command()
def rollback(name: RegisteredName = "edgeroute") -> None:
    """Give the champion alias back to the version the current champion replaced."""
    registry = _registry()
    try:
        result = registry.rollback(name)
    except ValueError as exc:
        raise _fail(str(exc), 1) from None
    champion, before = result["champion"], result["rolled_back_from"]
    typer.echo(f"{name}: champion is now version {champion} (rolled back from {before})")


@app.command()
def serve(
    bundle: BundleOption = None,
    model: ModelOption = None,
    role: Annotated[str, typer.Option(help="edge: route and escalate; cloud: answer escalations.")] = "edge",
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    cloud_url: CloudUrl = None,
    audit: Annotated[Path, typer.Option(help="The audit trail (SQLite).")] = Path("work/audit/audit.db"),
    max_text_chars: Annotated[int, typer.Option(min=1, help="Longest text accepted (413 above).")] = 4000,
    max_batch: Annotated[int, typer.Option(min=1, help="Most texts in one request (413 above).")] = 256,
    timeout: Annotated[float, typer.Option(help="Seconds to answer a request (504 after).")] = 10.0,
    micro_batch: Annotated[
        int, typer.Option(min=0, help="Most texts of concurrent requests routed in one model call (0: off).")
    ] = 64,
    micro_batch_wait_ms: Annotated[
        float, typer.Option(min=0, help="Milliseconds a micro-batch waits for more requests.")
    ] = 0.0,
    micro_batch_workers: Annotated[
        int | None, typer.Option(min=1, help="Micro-batches routed at once [default: one per CPU core].")
    ] = None,
    threads: Annotated[int, typer.Option(min=1, help="ONNX Runtime threads per model call.")] = 1,
    cloud_timeout: Annotated[float, typer.Option(help="Seconds per call to the cloud service.")] = 2.0,
    cloud_retries: Annotated[int, typer.Option(min=0, help="Retries of a failed cloud call.")] = 2,
    breaker_failures: Annotated[int, typer.Option(min=1, help="Failures that open the circuit.")] = 5,
    breaker_reset: Annotated[float, typer.Option(help="Seconds before an open circuit tries again.")] = 30.0,
    window: Annotated[float, typer.Option(help="Monitor window, seconds.")] = 3600.0,
    min_edge_share: Annotated[float, typer.Option(help="Alert below this edge share.")] = 0.80,
    min_accuracy: Annotated[float, typer.Option(help="Alert below this feedback accuracy.")] = 0.85,
    max_cost: Annotated[float, typer.Option(help="Alert above this cost per query ($).")] = 0.01,
    max_p95_ms: Annotated[float, typer.Option(help="Alert above this p95 latency (ms).")] = 150.0,
) -> None:
    """Serve the router over HTTP (API key from EDGEROUTE_API_KEY, if set)."""
    import os

    import uvicorn

    from edgeroute.audit import AuditLog
    from edgeroute.bundle import BundleError, load_bundle
    from edgeroute.cloud import CircuitBreaker
    from edgeroute.monitor import Monitor, Thresholds
    from edgeroute.server import ServeSettings, create_app, edge_cloud_router, model_version

    if role not in ("edge", "cloud"):
        raise _fail(f"--role must be edge or cloud, not {role!r}", 2)
    path, registered = resolve_bundle(bundle, model)
    breaker = CircuitBreaker(breaker_failures, breaker_reset)
    http = {
        "timeout_s": cloud_timeout,
        "retries": cloud_retries,
        "api_key": os.environ.get("EDGEROUTE_CLOUD_API_KEY"),
    }
    try:  # each file's checksum when it is first read: only what this service loads
        loaded = load_bundle(path, lazy=True)
        router = edge_cloud_router(loaded, role, cloud_url, breaker, threads=threads, **http)
    except BundleError as exc:
        raise _fail(str(exc), 2) from None
    thresholds = Thresholds(
        min_edge_share=min_edge_share, min_accuracy=min_accuracy, max_cost_per_query=max_cost,
        max_p95_latency_ms=max_p95_ms, window_s=window,
    )  # fmt: skip
    settings = ServeSettings(
        role=role, model_version=model_version(loaded, registered), max_text_chars=max_text_chars,
        max_batch=max_batch, timeout_s=timeout, api_key=os.environ.get("EDGEROUTE_API_KEY") or None,
        micro_batch=micro_batch, micro_batch_wait_ms=micro_batch_wait_ms,
        micro_batch_workers=micro_batch_workers or os.cpu_count() or 1,
    )  # fmt: skip
    app = create_app(router, AuditLog(audit), Monitor(thresholds, router.settings.costs), settings)
    typer.echo(f"edgeroute {role} service, model {settings.model_version}, on http://{host}:{port}")
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
