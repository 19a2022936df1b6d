"""The ``edgeroute`` command line of the runtime: ``classify``, ``simulate`` and ``serve`` a bundle.

Installed parts add their own commands through `edgeroute.plugins`: the training side adds
``train``, ``config``, ``promote``, ``rollback`` and bundles named ``models:/<name>@<alias>``.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer
from typer.core import TyperGroup

from edgeroute.config import ConfigError, ServeConfig, is_postgres, load_serve_config
from edgeroute.plugins import PluginError, plugins
from edgeroute.router import CLOUD_ERROR, chunks


class CommandGroup(TyperGroup):
    """The runtime's commands, then those of the installed plugins; a command that no plugin
    answers names the extra to install when a registered plugin could not be loaded."""

    def list_commands(self, ctx: typer.Context) -> list[str]:
        added = [name for group in _plugin_groups() for name in group.list_commands(ctx)]
        return [*super().list_commands(ctx), *added]

    def get_command(self, ctx: typer.Context, name: str):
        command = super().get_command(ctx, name)
        if command is not None:  # a runtime command: the plugins are not even imported
            return command
        for group in _plugin_groups():
            command = group.get_command(ctx, name)
            if command is not None:
                return command
        missing = plugins().missing
        return _not_installed(name, "; ".join(m.advice() for m in missing)) if missing else None


def _plugin_groups() -> list[TyperGroup]:
    groups = [typer.main.get_command(p.commands) for p in plugins().loaded.values()]
    return [g for g in groups if isinstance(g, TyperGroup)]


def _not_installed(name: str, advice: str):
    """A command ``name`` that takes any arguments and exits 2 with ``advice``."""
    stub = typer.Typer()
    anything = {"ignore_unknown_options": True, "allow_extra_args": True}

    @stub.command(name, context_settings=anything, add_help_option=False)
    def missing() -> None:
        raise fail(f"{name!r} is not a runtime command: {advice}", 2)

    return typer.main.get_command(stub)


app = typer.Typer(
    help="Hybrid edge/cloud text classification for customer support.",
    no_args_is_help=True,
    cls=CommandGroup,
)
Overrides = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override one field, e.g. --set limits.max_batch=64 (repeatable)."),
]


def fail(message: str, code: int) -> typer.Exit:
    """The exit of a command that cannot go on: ``message`` on stderr, exit status ``code``."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(code)


BundleOption = Annotated[Path | None, typer.Option("--bundle", "-b", help="A bundle directory.")]
ModelOption = Annotated[
    str | None, typer.Option("--model", "-m", help="A registered bundle: models:/<name>@<alias>.")
]
CloudUrl = Annotated[
    str | None,
    typer.Option(
        help="Escalate to this cloud (cloud.url): an edgeroute service, or an OpenAI-compatible API."
    ),
]
CloudBackendOption = Annotated[
    str | None, typer.Option(help="local (the bundle's FP32 model), edgeroute or openai (cloud.backend).")
]
CloudModelOption = Annotated[
    str | None, typer.Option(help="The LLM to ask, with --cloud-backend openai (cloud.model).")
]
MinConfidenceOption = Annotated[
    float | None,
    typer.Option(
        min=0, max=1, help="Answer on the edge from this confidence up, not the bundle's (min_confidence)."
    ),
]
NoCacheOption = Annotated[
    bool, typer.Option("--no-cache", help="Ask the cloud again: no cached answers (cloud.cache_dir).")
]
JsonOption = Annotated[bool, typer.Option("--json", help="One JSON object per line.")]
ServeConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="A serve config YAML (fields: edgeroute.config.ServeConfig)."),
]


def serve_config(
    config: Path | None, overrides: list[str] | None, shortcuts: dict[str, object], *, no_cache: bool = False
) -> ServeConfig:
    """The serve config of ``config``, then ``--set`` ``overrides``, then the options given
    (``shortcuts``: field -> value, None when not given); exit 2 naming a bad field."""
    # As JSON, which YAML reads back unchanged: a host or path is never taken for a number.
    settings = [
        *(overrides or []),
        *(
            f"{k}={json.dumps(v if isinstance(v, int | float) else str(v))}"
            for k, v in shortcuts.items()
            if v is not None
        ),
        *(["cloud.cache_dir=null"] if no_cache else []),
    ]
    try:
        return load_serve_config(config, settings)
    except ConfigError as exc:
        raise fail(str(exc), 2) from None


def _model_plugin(model: str):
    """The installed plugin that resolves model URIs; exit 2 naming what to install without one."""
    found = [p for p in plugins().loaded.values() if p.resolve_model is not None]
    if not found:
        advice = "; ".join(m.advice() for m in plugins().missing) or "no installed part resolves model URIs"
        raise fail(f"--model {model}: registered models need the training side: {advice}", 2)
    return found[0]


def resolve_bundle(bundle: Path | None, model: str | None) -> tuple[Path, str | None]:
    """The bundle directory, fetched by a plugin for ``--model``; and its registry version."""
    if (bundle is None) == (model is None):
        raise fail("give a bundle: --bundle DIR or --model models:/<name>@<alias>", 2)
    if model is None:
        return bundle, None
    try:
        return _model_plugin(model).resolve_model(model)
    except PluginError as exc:
        raise fail(f"--model {model}: {exc}", 2) from None


def open_router(bundle: Path | None, model: str | None, serving: ServeConfig):
    """The edge router of a bundle given by path or by model URI, escalating as ``serving.cloud`` says."""
    from edgeroute.bundle import BundleError, edge_cloud_router, load_bundle
    from edgeroute.cloud import CircuitBreaker, CloudRefused
    from edgeroute.privacy import PrivacyError

    bundle, _ = resolve_bundle(bundle, model)
    try:
        loaded = load_bundle(bundle)
        return edge_cloud_router(
            loaded, serving, CircuitBreaker(serving.breaker.failures, serving.breaker.reset_s)
        )
    except (BundleError, PrivacyError, CloudRefused) as exc:
        raise fail(str(exc), 2) from None


def _read_lines(source: Path) -> Iterator[str]:
    """Non-blank lines of a file or stdin, each decoded on its own so that a bad one is named."""
    stdin = str(source) == "-"
    with sys.stdin.buffer if stdin else source.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                name = "stdin" if stdin else source
                raise fail(f"{name}: line {number}: not valid UTF-8 ({exc.reason})", 2) from None
            if line.strip():
                yield line.rstrip("\r\n")


def _checked(texts: list[str]) -> list[str]:
    """Texts given as arguments, refused by position when one cannot be routed."""
    from edgeroute.router import unicode_problem

    for i, text in enumerate(texts, start=1):
        problem = "empty text" if not text.strip() else unicode_problem(text)
        if problem:
            raise fail(f"argument {i}: {problem}", 2)
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
    cloud_backend: CloudBackendOption = None,
    cloud_model: CloudModelOption = None,
    min_confidence: MinConfidenceOption = None,
    no_cache: NoCacheOption = False,
    config: ServeConfigOption = None,
    overrides: Overrides = None,
    as_json: JsonOption = False,
) -> None:
    """Route texts through the edge model, escalating hard ones to the cloud tier."""
    cloud = _cloud_shortcuts(cloud_url, cloud_backend, cloud_model, min_confidence)
    router = open_router(bundle, model, serve_config(config, overrides, cloud, no_cache=no_cache))
    if file is not None and not (str(file) == "-" or file.is_file()):
        raise fail(f"--file {file}: no such file", 2)
    source = _checked(texts) if texts else _read_lines(file if file is not None else Path("-"))
    outcomes = Counter()
    for chunk in chunks(source):
        for text, decision in zip(chunk, router.route(chunk), strict=True):
            outcomes.update(_cloud_outcome(decision))
            if as_json:
                typer.echo(json.dumps(decision.to_dict() | {"text": text}))
            else:
                confidence = "-" if decision.confidence is None else f"{decision.confidence:.3f}"
                typer.echo(
                    f"{_cell(decision.label)}\t{confidence}\t{decision.route}\t{decision.reason}"
                    f"\t${decision.cost:.4f}\t{_cell(text)}"
                )
    _require_a_working_cloud(outcomes)


def _cell(value: str) -> str:
    """A field of the tab-separated output, safe to open in a spreadsheet: one that a spreadsheet
    would run as a formula (``=``, ``+``, ``-``, ``@`` first) is quoted with ``'`` (OWASP's advice
    on CSV injection), and tabs and line breaks become spaces."""
    value = " ".join(value.replace("\t", " ").splitlines())
    return f"'{value}" if value[:1] in ("=", "+", "-", "@") else value


def _cloud_shortcuts(
    url: str | None, backend: str | None, model: str | None, min_confidence: float | None
) -> dict[str, object]:
    """The serve-config fields of the cloud options every runtime command takes."""
    return {
        "cloud.url": url,
        "cloud.backend": backend,
        "cloud.model": model,
        "min_confidence": min_confidence,
    }


def _cloud_outcome(decision) -> list[str]:
    """``answered`` or ``failed`` for a decision that escalated, nothing for one that did not."""
    return ["answered"] if decision.route == "cloud" else ["failed"] if decision.reason == CLOUD_ERROR else []


def _require_a_working_cloud(outcomes: Counter) -> None:
    """Exit 1 when the cloud was needed and failed every time: the answers are all the edge's."""
    if outcomes["failed"] and not outcomes["answered"]:
        raise fail(
            f"every cloud call failed ({outcomes['failed']} escalations answered on the edge as "
            "cloud_error): check the cloud URL and EDGEROUTE_CLOUD_API_KEY",
            1,
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
    cloud_backend: CloudBackendOption = None,
    cloud_model: CloudModelOption = None,
    min_confidence: MinConfidenceOption = None,
    no_cache: NoCacheOption = False,
    config: ServeConfigOption = None,
    overrides: Overrides = None,
    as_json: JsonOption = False,
) -> None:
    """Route stored messages and project the edge/cloud split and the monthly cost."""
    from edgeroute.router import project, summarize

    texts, labels = _read_messages(data, text_column, label_column)
    cloud = _cloud_shortcuts(cloud_url, cloud_backend, cloud_model, min_confidence)
    router = open_router(bundle, model, serve_config(config, overrides, cloud, no_cache=no_cache))
    decisions = [d for chunk in chunks(texts) for d in router.route(chunk)]
    _require_a_working_cloud(Counter(o for d in decisions for o in _cloud_outcome(d)))
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
    from edgeroute.tables import TableError, read_messages

    try:
        return read_messages(path, text_column, label_column)
    except TableError as exc:
        raise fail(str(exc), 1) from None


ServedModel = Annotated[
    str | None,
    typer.Option(
        "--model", "-m", help="A registered bundle: models:/<name>@<alias>, followed as the alias moves."
    ),
]
CanaryOption = Annotated[
    str | None,
    typer.Option(help="A second model answering --canary-share of the requests: models:/… or a bundle."),
]
CanaryShare = Annotated[
    float | None, typer.Option(min=0, max=1, help="Share of requests the canary answers (canary_share).")
]
RefreshSeconds = Annotated[
    float | None,
    typer.Option(min=0, help="Seconds between looks at the registry aliases served; 0: never (refresh_s)."),
]
WindowSeconds = Annotated[
    float | None,
    typer.Option(
        min=1, help="Seconds of traffic the health report covers, rebuilt at start (monitor.window_s)."
    ),
]
RoleOption = Annotated[
    str | None, typer.Option(help="edge: route and escalate; cloud: answer escalations (role).")
]
AuditOption = Annotated[
    str | None,
    typer.Option(help="The audit trail: a SQLite file (audit.path) or a postgresql:// URL (audit.url)."),
]


@app.command()
def serve(
    bundle: BundleOption = None,
    model: ServedModel = None,
    canary: CanaryOption = None,
    canary_share: CanaryShare = None,
    refresh_s: RefreshSeconds = None,
    window: WindowSeconds = None,
    config: ServeConfigOption = None,
    overrides: Overrides = None,
    role: RoleOption = None,
    host: Annotated[str | None, typer.Option(help="Interface to listen on (host).")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on (port).")] = None,
    cloud_url: CloudUrl = None,
    cloud_backend: CloudBackendOption = None,
    cloud_model: CloudModelOption = None,
    min_confidence: MinConfidenceOption = None,
    no_cache: NoCacheOption = False,
    audit: AuditOption = None,
) -> None:
    """Serve the router over HTTP; settings from --config, then --set, then the options here.

    With --model models:/<name>@<alias> (and --canary), the service looks at the alias every
    --refresh-s and swaps a new version in without dropping a request. Fields and defaults:
    edgeroute.config.ServeConfig. The API key is read from EDGEROUTE_API_KEY, if set, and the
    feedback keys from EDGEROUTE_FEEDBACK_KEYS (a JSON object of source name to key).
    """
    import signal

    import uvicorn

    from edgeroute.access import access_of
    from edgeroute.deadline import protocol
    from edgeroute.server import create_app

    shortcuts = {"role": role, "host": host, "port": port, "refresh_s": refresh_s,
                 "canary_share": canary_share, "monitor.window_s": window}  # fmt: skip
    if audit is not None:
        shortcuts["audit.url" if is_postgres(audit) else "audit.path"] = audit
    shortcuts |= _cloud_shortcuts(cloud_url, cloud_backend, cloud_model, min_confidence)
    serving = serve_config(config, overrides, shortcuts, no_cache=no_cache)
    try:
        access = access_of(serving)
    except ConfigError as exc:
        raise fail(str(exc), 2) from None
    service, downloads = _service(serving, bundle, model, canary)
    app = create_app(service, access)
    _announce(serving, service)
    limits = serving.limits
    # uvicorn stops gracefully on SIGTERM, then raises it again: stop here instead, so that the
    # trail is closed (a spool flushed) and the downloaded versions removed.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        uvicorn.run(
            app, host=serving.host, port=serving.port, log_level="warning", access_log=False,
            http=protocol(limits.read_timeout_s, limits.max_connections_per_client),
            limit_concurrency=limits.max_connections,
        )  # fmt: skip
    finally:
        service.audit.close()
        downloads.close()


def _service(serving: ServeConfig, bundle: Path | None, model: str | None, canary: str | None):
    """The `RouterService` of ``serving`` over the champion (``bundle`` or ``model``) and the
    ``canary`` (a model URI or a bundle directory), following their aliases, and the owner of
    what it downloaded; exit 2 naming what cannot be loaded or opened."""
    import socket

    from edgeroute.audit import AuditError
    from edgeroute.bundle import BundleError
    from edgeroute.cloud import CircuitBreaker, CloudRefused
    from edgeroute.monitor import Monitor
    from edgeroute.privacy import PrivacyError
    from edgeroute.releases import Downloads, Follower, Releases, open_release
    from edgeroute.service import RouterService
    from edgeroute.trails import open_trail

    sources = {"champion": model, "canary": canary}
    located = {
        "champion": resolve_bundle(bundle, model),
        "canary": _canary_bundle(canary) if canary is not None else None,
    }
    breaker = CircuitBreaker(serving.breaker.failures, serving.breaker.reset_s)

    def build(path: Path, registered: str | None, *, lazy: bool = False):
        return open_release(path, registered, serving, breaker, lazy=lazy)

    try:  # each file's checksum when it is first read: only what this service loads
        loaded = {slot: build(*where, lazy=True) for slot, where in located.items() if where is not None}
        audit_log = open_trail(serving.audit, f"{socket.gethostname()}:{serving.port}")
    except (BundleError, AuditError, PrivacyError, CloudRefused) as exc:
        raise fail(str(exc), 2) from None
    releases = Releases(loaded["champion"], loaded.get("canary"), serving.canary_share if canary else 0.0)
    downloads = Downloads(releases, _forget_model)
    for slot, uri in sources.items():
        if uri is not None and uri.startswith("models:/"):
            downloads.own(loaded[slot], located[slot][0])
    followers = [
        Follower(
            uri, slot, releases, refresh_s=serving.refresh_s, lookup=_lookup(uri),
            fetch=lambda pinned: _model_plugin(pinned).resolve_model(pinned)[0], build=downloads.build(build),
        )
        for slot, uri in sources.items()
        if uri is not None and uri.startswith("models:/") and "@" in uri and serving.refresh_s > 0
    ]  # fmt: skip
    monitor = Monitor(serving.monitor, releases.champion.router.settings.costs)
    return RouterService(releases, audit_log, monitor, serving, followers), downloads


def _announce(serving: ServeConfig, service) -> None:
    """What is served, where, and how the audit trail is kept."""
    releases = service.releases
    versions = releases.champion.version + (
        f", canary {releases.canary.version} at {releases.canary_share:.0%}" if releases.canary else ""
    )
    followers = service.followers
    following = (
        f", following {', '.join(f.uri for f in followers)} every {serving.refresh_s:g} s"
        if followers
        else ""
    )
    typer.echo(
        f"edgeroute {serving.role} service, model {versions}{following}, on http://{serving.host}:{serving.port}"
    )
    trail = serving.audit
    kept = "masked texts kept" if trail.keep_text == "masked" else "no text kept"
    kept += f", for {trail.retention_days:g} days" if trail.retention_days is not None else ""
    if trail.url is not None:
        kept += f", rows named {service.audit.instance}, spooled to {trail.spool} while it is away"
    typer.echo(f"audit trail {trail.location}: {kept}")


def _canary_bundle(canary: str) -> tuple[Path, str | None]:
    """``--canary``: a model URI resolved as ``--model`` is, or a bundle directory."""
    return (
        resolve_bundle(None, canary) if canary.startswith("models:/") else resolve_bundle(Path(canary), None)
    )


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(0)


def _forget_model(path: Path) -> None:
    """What a plugin downloaded for ``path`` removed, by the plugin that resolves model URIs."""
    for plugin in plugins().loaded.values():
        if plugin.forget_model is not None:
            plugin.forget_model(path)


def _lookup(uri: str):
    """Which version the alias of ``uri`` names now, by the plugin that resolves it."""
    plugin = _model_plugin(uri)
    if plugin.lookup_model is None:
        raise fail(f"{uri}: the installed plugin cannot follow an alias", 2)
    return plugin.lookup_model


audit_app = typer.Typer(
    help="The audit trail: verify a box's SQLite trail, move it to a fleet's Postgres; a fleet's health.",
    no_args_is_help=True,
)
app.add_typer(audit_app, name="audit")


@audit_app.command()
def verify(database: Annotated[Path, typer.Argument(help="The SQLite trail of one box.")]) -> None:
    """Check that no row of a SQLite trail was edited, inserted or removed since it was written:
    each row's chained HMAC must follow from the row before (exit 1 naming the first that does not)."""
    from edgeroute.audit import AuditError, verify_trail

    try:
        counts = verify_trail(database)
    except AuditError as exc:
        raise fail(str(exc), 1) from None
    older = counts["unchained_decisions"] + counts["unchained_feedback"]
    typer.echo(
        f"{database}: {counts['decisions']} decisions and {counts['feedback']} feedback labels verified"
        + (f"; {older} rows from before the trail was chained, not verifiable" if older else "")
    )


@audit_app.command()
def migrate(
    database: Annotated[Path, typer.Argument(help="The SQLite trail of one box.")],
    url: Annotated[str, typer.Argument(help="The fleet's Postgres trail: postgresql://…")],
    instance: Annotated[
        str | None, typer.Option(help="The name its rows get there (default: this host's name).")
    ] = None,
) -> None:
    """Copy every decision and feedback of a SQLite trail into a Postgres trail, in one
    transaction; rows already there are not copied again."""
    import socket

    from edgeroute.audit import AuditError
    from edgeroute.config import redact_password
    from edgeroute.pgtrail import migrate as copy

    if not is_postgres(url):
        raise fail(f"{url!r} is not a postgresql:// URL", 2)
    try:
        counts = copy(database, url, instance or socket.gethostname())
    except AuditError as exc:
        raise fail(str(exc), 1) from None
    typer.echo(
        f"{database} -> {redact_password(url)}: {counts['decisions_copied']} of {counts['decisions']} "
        f"decisions and {counts['feedback_copied']} of {counts['feedback']} feedback labels copied "
        "(the rest were there already)"
    )


@audit_app.command()
def health(
    trail: Annotated[str, typer.Argument(help="A postgresql:// trail a fleet writes, or a SQLite file.")],
    config: ServeConfigOption = None,
    overrides: Overrides = None,
    bundle: BundleOption = None,
    model: ModelOption = None,
) -> None:
    """The health report of every service writing TRAIL, over the monitor's window of the serve
    config (thresholds too): all instances, each model version, and each instance, as JSON.

    With the champion's bundle (--bundle, or --model models:/<name>@champion), its version is the
    champion, its costs price the estimate and its reference profile judges drift; without, the
    busiest version is taken for the champion and drift is not judged."""
    from edgeroute.audit import AuditError
    from edgeroute.bundle import BundleError, load_bundle
    from edgeroute.monitor import fleet_report
    from edgeroute.releases import model_version
    from edgeroute.trails import window

    thresholds = serve_config(config, overrides, {}).monitor
    served = {}
    if bundle is not None or model is not None:
        path, registered = resolve_bundle(bundle, model)
        try:
            champion = load_bundle(path)
        except BundleError as exc:
            raise fail(str(exc), 2) from None
        served = {"champion": model_version(champion, registered), "profile": champion.profile(),
                  "costs": champion.router_settings().costs}  # fmt: skip
    try:
        rows = window(trail, time.time() - thresholds.window_s, thresholds.max_events)
    except AuditError as exc:
        raise fail(str(exc), 1) from None
    typer.echo(json.dumps(fleet_report(rows, thresholds, **served), indent=2))
