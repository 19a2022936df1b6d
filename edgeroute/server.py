"""The router as an HTTP service (FastAPI): classify, feedback, health, Prometheus metrics.

``edge`` role: the INT8 model answers and escalates to its cloud tier (the bundle's FP32 model
in-process, or a cloud-role service over HTTP behind a circuit breaker). ``cloud`` role: the
bundle's FP32 model answers every query; an edge-role service calls it for escalations.

The models answering are `edgeroute.releases.Releases`: a champion and an optional canary, each
swapped atomically while requests are in flight (a `Follower` per registry alias does that).
Every response, audit row and metric names the version that answered.

Every decision goes to the audit trail (a keyed hash of the text, never the text) and to the
monitor, whose window is rebuilt from the trail at start; logs carry request ids and counts,
never message text.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import asdict
from typing import Any, TypeVar

from fastapi import FastAPI, HTTPException, Request, Security
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import APIKeyHeader
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Enum,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from edgeroute.access import Access, Denied, RateLimit
from edgeroute.audit import AuditUnavailable, FeedbackConflict, Trail
from edgeroute.batching import MicroBatcher
from edgeroute.cloud import CircuitBreaker, GuardedCloud
from edgeroute.config import ServeConfig
from edgeroute.monitor import Monitor, Observation
from edgeroute.privacy import normalize
from edgeroute.releases import Follower, Release, Releases, Slot
from edgeroute.router import Decision, Router, unicode_problem

logger = logging.getLogger("edgeroute.server")
BREAKER_STATES = ("closed", "half_open", "open")
API_KEY_HEADER = APIKeyHeader(name="X-API-Key", auto_error=False)
T = TypeVar("T")
OPEN = Access()  # no key: every route open, a feedback source named by the client's address
PURGE_EVERY_S = 3600.0  # how often rows past audit.retention_days are looked for


class Gatekeeper:
    """ASGI middleware that answers before the app reads a byte of the body: the keys of
    ``/v1/*`` requests and of the API's description (`edgeroute.access.Access`: 401, or 403 for
    another role's key), then the declared size and, while it streams in, the actual size of the
    body (413 past ``max_body_bytes``; the reading stops there). The feedback source admitted is
    the request's ``state.feedback_source``."""

    def __init__(self, app, *, access: Access, max_body_bytes: int) -> None:
        self.app, self.access, self.max_body_bytes = app, access, max_body_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        path = scope["path"]
        if path.startswith("/v1/") or (path == "/openapi.json" and self.access.api_key is not None):
            client = (scope.get("client") or ("unknown",))[0]
            try:
                source = self.access.admit(path, headers.get(b"x-api-key"), f"address {client}")
            except Denied as denied:
                await _answer(send, denied.status, denied.detail)
                return
            scope.setdefault("state", {})["feedback_source"] = source
        declared = headers.get(b"content-length", b"0")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            await _answer(send, 413, f"body: {int(declared)} bytes; at most {self.max_body_bytes}")
            return
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_body_bytes:  # raised inside the app: its 413, and no more reading
                raise HTTPException(413, f"body: more than {self.max_body_bytes} bytes")
            return message

        await self.app(scope, limited_receive, send)


async def _answer(send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class ClassifyRequest(BaseModel):
    """One text (``text``) or a batch (``texts``)."""

    model_config = ConfigDict(extra="forbid")
    text: str | None = None
    texts: list[str] | None = None

    @model_validator(mode="after")
    def _one_of(self) -> ClassifyRequest:
        if (self.text is None) == (self.texts is None):
            raise ValueError("give exactly one of 'text' (one message) or 'texts' (a batch)")
        return self

    def all_texts(self) -> list[str]:
        return [self.text] if self.text is not None else list(self.texts or [])


class Result(BaseModel):
    request_id: str
    model_version: str = Field(description="the model that answered: the champion's, or the canary's")
    label: str
    confidence: float | None
    route: str
    reason: str
    cost: float
    complexity: float


class ClassifyResponse(BaseModel):
    model_version: str = Field(description="the champion's version")
    results: list[Result]


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    request_id: str = Field(min_length=1, max_length=64)
    label: str = Field(min_length=1, max_length=200)


class FeedbackResponse(BaseModel):
    request_id: str
    source: str = Field(description="the source it is recorded under: its key's name, or the client address")
    correct: bool | None = Field(description="whether the answer was right; None once it left the window")
    recorded: bool = Field(description="False when the same label was already recorded")


class WindowMetrics(BaseModel):
    requests: int
    edge_share: float | None
    cost_per_query: float | None
    p95_latency_ms: float | None
    avg_complexity: float | None
    accuracy: float | None
    labelled: int
    feedback_sources: dict[str, int] = Field(description="labelled requests by feedback source")


class Drift(BaseModel):
    method: str = Field(description="psi: the population stability index of each feature")
    features: dict[str, float]
    max_psi: float
    threshold: float
    samples: int


class CostEstimate(BaseModel):
    requests_per_day: float
    monthly_cost: float
    monthly_cloud_only_cost: float


class Canary(BaseModel):
    model_version: str
    share: float


class HealthReport(BaseModel):
    score: int
    status: str
    window_s: float
    metrics: WindowMetrics
    versions: dict[str, WindowMetrics] = Field(
        description="the window's metrics of each version that answered"
    )
    drift: Drift | None = Field(description="None without a reference profile or enough requests")
    alerts: list[str]
    trends: dict[str, str]
    recommendations: list[str]
    cost_estimate: CostEstimate
    thresholds: dict[str, float]
    role: str
    model_version: str = Field(description="the champion's version")
    canary: Canary | None


class AuditState(BaseModel):
    state: str = Field(
        description="written; spooling (a Postgres trail away, rows waiting in the local spool); "
        "full (the spool at its bound, refusing requests); unavailable (a SQLite trail locked or full)"
    )
    spooled_rows: int
    spooled_bytes: int
    dropped_rows: int = Field(description="spooled rows dropped past the bound (audit.on_full=drop_oldest)")


class Readiness(BaseModel):
    status: str
    role: str
    model_version: str = Field(description="the champion's version")
    canary: Canary | None
    cloud: str | None = Field(description="the cloud circuit's state; None without a cloud tier")
    cloud_constraint: str | None = Field(
        None, description="the form that keeps an LLM cloud's answers to the labels, once probed"
    )
    audit: AuditState


class Problem(BaseModel):
    detail: str


class FieldProblem(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class Invalid(BaseModel):
    detail: str | list[FieldProblem]


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The error answers of an operation, for its OpenAPI description."""
    meaning = {
        400: "the body is not readable as JSON",
        401: "missing or wrong API key (header X-API-Key)",
        403: "the key of another role: the classify key on feedback, or a feedback key elsewhere",
        404: "no such request in the audit trail",
        409: "the request already has another feedback label",
        429: "the feedback source posted more than feedback.max_per_minute; see Retry-After",
        413: "a text, the batch or the body is too large",
        422: "a field is missing, of the wrong type or out of range",
        503: "the audit trail cannot be used now (locked, a full disk, or its spool full); retry",
        504: "no answer within limits.timeout_s",
    }
    return {
        code: {"model": Invalid if code == 422 else Problem, "description": meaning[code]}
        for code in statuses
    }


async def kept(use: Callable[..., T], *args: Any) -> T:
    """``use(*args)`` of the audit trail on a worker thread, so that a wait for its lock never
    holds the event loop (the probes answer meanwhile); 503 while the trail cannot be used."""
    try:
        return await run_in_threadpool(use, *args)
    except AuditUnavailable as exc:
        raise HTTPException(503, f"audit trail unavailable: {exc}", headers={"Retry-After": "1"}) from None


class Metrics:
    """The service's Prometheus metrics, in a registry of its own, with the process collectors."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self.decisions = Counter(
            "edgeroute_decisions",
            "Routed queries by the model version that answered, route and reason.",
            ["model_version", "route", "reason"],
            registry=self.registry,
        )
        self.cost = Counter(
            "edgeroute_cost_dollars", "Dollars spent on routed queries.", registry=self.registry
        )
        self.cloud_errors = Counter(
            "edgeroute_cloud_errors",
            "Escalations answered on the edge because the cloud failed.",
            registry=self.registry,
        )
        self.latency = Histogram(
            "edgeroute_request_duration_seconds",
            "Time to answer a classify request.",
            buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5),
            registry=self.registry,
        )
        self.cloud_latency = Histogram(
            "edgeroute_cloud_request_duration_seconds",
            "Time of one call to the cloud tier, by outcome (answered, failed).",
            ["outcome"],
            buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30),
            registry=self.registry,
        )
        self.edge_share = Gauge(
            "edgeroute_edge_share_ratio",
            "Share of the monitor's window answered on the edge, by model version.",
            ["model_version"],
            registry=self.registry,
        )
        self.accuracy = Gauge(
            "edgeroute_feedback_accuracy_ratio",
            "Accuracy from feedback over the monitor's window, by model version.",
            ["model_version"],
            registry=self.registry,
        )
        self.drift = Gauge(
            "edgeroute_input_drift_psi",
            "Population stability index of each input feature against the champion's profile.",
            ["feature"],
            registry=self.registry,
        )
        self.breaker = Enum(
            "edgeroute_cloud_breaker_state", "The cloud circuit's state.", states=list(BREAKER_STATES),
            registry=self.registry,
        )  # fmt: skip
        self.batch_size = Histogram(
            "edgeroute_batch_texts",
            "Texts per model call (micro-batches of concurrent requests).",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=self.registry,
        )
        self.feedback = Counter(
            "edgeroute_feedback",
            "Feedback received, by the model version that answered and whether it was right.",
            ["model_version", "correct"],
            registry=self.registry,
        )
        self.spooled = Gauge(
            "edgeroute_audit_spooled_rows",
            "Rows waiting in the local spool for the Postgres audit trail to come back.",
            registry=self.registry,
        )
        self.dropped = Gauge(
            "edgeroute_audit_dropped_rows",
            "Spooled rows dropped past the spool's bound since start (audit.on_full=drop_oldest).",
            registry=self.registry,
        )
        self.model_info = Gauge(
            "edgeroute_model_info",
            "1 for each model version the service answers with, by slot (champion, canary).",
            ["slot", "version"],
            registry=self.registry,
        )

    def show(self, report: dict[str, Any]) -> None:
        """The window's figures of a health report as gauges (a version gone from it is dropped)."""
        for gauge, name in ((self.edge_share, "edge_share"), (self.accuracy, "accuracy")):
            gauge.clear()
            for version, figures in report["versions"].items():
                if figures[name] is not None:
                    gauge.labels(version).set(figures[name])
        self.drift.clear()
        for feature, value in (report["drift"] or {}).get("features", {}).items():
            self.drift.labels(feature).set(value)

    def timed(self, release: Release) -> None:
        """Cloud calls of ``release`` observed in the cloud latency histogram."""
        if isinstance(release.router.cloud, GuardedCloud):
            release.router.cloud.observe = lambda seconds, outcome: self.cloud_latency.labels(
                outcome
            ).observe(seconds)


def _message(error: dict) -> str:
    """A validation error's message, with the parser's reason when it gives one as text."""
    reason = (error.get("ctx") or {}).get("error")
    return f"{error['msg']} ({reason})" if isinstance(reason, str) else error["msg"]


def breaker_of(router: Router) -> CircuitBreaker | None:
    return router.cloud.breaker if isinstance(router.cloud, GuardedCloud) else None


def restore_window(monitor: Monitor, audit: Trail) -> int:
    """The monitor's window refilled from the audit trail (at most its ``max_events``)."""
    thresholds = monitor.thresholds
    rows = audit.recent(monitor.clock() - thresholds.window_s, thresholds.max_events)
    return monitor.restore(Observation.from_audit(row) for row in rows)


def create_app(
    releases: Releases,
    audit: Trail,
    monitor: Monitor,
    config: ServeConfig,
    *,
    access: Access = OPEN,
    followers: Sequence[Follower] = (),
) -> FastAPI:
    """The service around loaded releases, behind ``access``'s keys; nothing is loaded per
    request, and ``followers`` swap new versions in while it runs."""
    metrics = Metrics()
    feedback_limit = RateLimit(config.feedback.max_per_minute)
    breaker = breaker_of(releases.champion.router)

    def installed(slot: Slot, release: Release, old: Release | None) -> None:
        if old is not None:
            metrics.model_info.remove(slot, old.version)
        metrics.model_info.labels(slot, release.version).set(1)
        metrics.timed(release)
        if slot == "champion":
            monitor.serve(release.version, release.profile)

    releases.listeners.append(installed)
    for slot in ("champion", "canary"):
        if getattr(releases, slot) is not None:
            installed(slot, getattr(releases, slot), None)
    restored = restore_window(monitor, audit)
    if restored:
        logger.info("monitor window rebuilt from %d decisions of the audit trail", restored)

    def on_edge(texts: list[str], release: Release) -> list[Decision]:
        metrics.batch_size.observe(len(texts))
        return release.decide_on_edge(texts)

    batcher = (
        MicroBatcher(
            on_edge,
            max_texts=config.batching.max_texts,
            max_wait_s=config.batching.wait_ms / 1000,
            workers=config.batching.workers or os.cpu_count() or 1,
        )
        if config.batching.max_texts
        else None
    )
    # A remote cloud's calls wait on threads of their own, never on the edge's: a slow cloud
    # cannot hold an answer the edge gives alone.
    cloud_calls = ThreadPoolExecutor(config.cloud.max_concurrency, thread_name_prefix="edgeroute-cloud")

    async def escalate(router: Router, decisions: list[Decision]) -> list[Decision]:
        """The cloud's answers to the texts that wait for it, within ``cloud.answer_within_s`` (half
        the request's budget by default); past that the edge answers them, and the call counts
        as a failure of the circuit."""
        guard = breaker_of(router)
        # No cloud, or an open circuit: not even queued behind calls that hang.
        if router.cloud is None or (guard is not None and guard.state == "open"):
            return router.settle(decisions, None, False)
        call = cloud_calls.submit(router.ask_cloud, router.sent_texts(decisions))
        within = config.cloud_wait_s
        try:
            answers, attempted = await asyncio.wait_for(asyncio.wrap_future(call), within)
        except TimeoutError:
            attempted = not call.cancel()  # a call still queued is cancelled: it never reached the cloud
            if guard is not None:
                guard.record(False)
            logger.warning("cloud tier: no answer within cloud.answer_within_s=%g s", within)
            answers = None
        return router.settle(decisions, answers, attempted)

    async def decide(release: Release, texts: list[str]) -> list[Decision]:
        if batcher and release.batch_independent:
            decisions = await batcher.submit(texts, release)
        else:
            decisions = await run_in_threadpool(on_edge, texts, release)
        router = release.escalating
        if router is None or not router.to_cloud(decisions):
            return decisions
        return await escalate(router, decisions)

    async def answer(texts: list[str], ids: list[str]) -> list[tuple[Release, Decision]]:
        """Each text's answer, from the release its request id picks, in order."""
        groups: dict[Release, list[int]] = {}
        for i, release in enumerate(releases.pick(ids)):
            groups.setdefault(release, []).append(i)
        answers = await asyncio.gather(*(decide(r, [texts[i] for i in group]) for r, group in groups.items()))
        answered: dict[int, tuple[Release, Decision]] = {}
        for (release, group), decisions in zip(groups.items(), answers, strict=True):
            answered |= {i: (release, d) for i, d in zip(group, decisions, strict=True)}
        return [answered[i] for i in range(len(texts))]

    async def purge() -> None:
        """Every hour, from start: the rows past ``audit.retention_days`` removed."""
        while True:
            cutoff = time.time() - config.audit.retention_days * 86400
            try:
                removed = await run_in_threadpool(audit.purge, cutoff)
            except AuditUnavailable as exc:
                logger.warning("audit trail: no purge now, tried again in an hour (%s)", exc)
                removed = 0
            if removed:
                logger.info("audit trail: %d decisions past audit.retention_days purged", removed)
            await asyncio.sleep(PURGE_EVERY_S)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        tasks = [asyncio.create_task(f.run(), name=f"edgeroute-follow-{f.slot}") for f in followers]
        if config.audit.retention_days is not None:
            tasks.append(asyncio.create_task(purge(), name="edgeroute-audit-retention"))
        yield
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if batcher is not None:
            await batcher.close()
        cloud_calls.shutdown(wait=False, cancel_futures=True)

    def canary() -> Canary | None:
        release = releases.canary
        return None if release is None else Canary(model_version=release.version, share=releases.canary_share)

    # With a key, the API's description is behind it too: GET /openapi.json with the key; no
    # interactive pages, which a browser could not open with the header.
    # The keys are checked once, by the Gatekeeper; the routes declare the header for the docs.
    keyed = {"docs_url": None, "redoc_url": None, "openapi_url": None} if access.api_key is not None else {}
    app = FastAPI(title="edgeroute", version=releases.champion.version, lifespan=lifespan, **keyed)
    app.state.releases = releases
    app.add_middleware(Gatekeeper, access=access, max_body_bytes=config.limits.max_body_bytes)
    authorised = Security(API_KEY_HEADER)

    if access.api_key is not None:

        @app.get("/openapi.json", include_in_schema=False)
        async def openapi() -> dict:
            return app.openapi()

    # Starlette's class, so that FastAPI's own errors (an unreadable body, 404, 405) come here too.
    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail
        if exc.status_code == 400 and exc.__cause__ is not None:
            # FastAPI's own "error parsing the body" (nesting too deep, bytes not UTF-8): say why.
            detail = f"body: not readable as JSON ({exc.__cause__})"
        return JSONResponse({"detail": detail}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        # Where and what, without echoing the input: NaN or a lone surrogate in it cannot be
        # written back as JSON, and the text is the caller's to keep.
        errors = [{"loc": e["loc"], "msg": _message(e), "type": e["type"]} for e in exc.errors()]
        return JSONResponse({"detail": errors}, status_code=422)

    @app.post(
        "/v1/classify",
        response_model=ClassifyResponse,
        dependencies=[authorised],
        responses=_errors(400, 401, 403, 413, 422, 503, 504),
    )
    async def classify(body: ClassifyRequest) -> ClassifyResponse:
        texts = body.all_texts()
        if not texts:
            raise HTTPException(422, "texts: the batch is empty")
        if len(texts) > config.limits.max_batch:
            raise HTTPException(
                413, f"texts: {len(texts)} texts in one request; at most {config.limits.max_batch}"
            )
        for i, text in enumerate(texts):
            where = "text" if body.text is not None else f"texts[{i}]"
            if len(text) > config.limits.max_text_chars:
                raise HTTPException(
                    413, f"{where}: {len(text)} characters; at most {config.limits.max_text_chars}"
                )
            # What the masker and the cloud read: NFKC can make a text many times longer.
            if (normal := len(normalize(text))) > config.limits.max_text_chars:
                raise HTTPException(
                    413, f"{where}: {normal} characters once normalised (NFKC); at most "
                    f"{config.limits.max_text_chars}",
                )  # fmt: skip
            if not text.strip():
                raise HTTPException(422, f"{where}: empty text")
            if problem := unicode_problem(text):
                raise HTTPException(422, f"{where}: {problem}")
        ids = [uuid.uuid4().hex for _ in texts]
        champion = releases.champion.version
        start = time.perf_counter()
        try:
            answered = await asyncio.wait_for(answer(texts, ids), config.limits.timeout_s)
        except TimeoutError:
            raise HTTPException(504, f"no answer within {config.limits.timeout_s:g} s") from None
        elapsed = time.perf_counter() - start
        now = time.time()
        results = [
            Result(
                request_id=request_id,
                model_version=release.version,
                **{k: getattr(d, k) for k in Result.model_fields if k not in ("request_id", "model_version")},
            )
            for request_id, (release, d) in zip(ids, answered, strict=True)
        ]
        observations = [
            Observation(
                request_id=r.request_id, time=now, model_version=r.model_version, route=r.route,
                label=r.label, cost=r.cost, latency_ms=elapsed * 1000, complexity=r.complexity,
                length=len(text), unfamiliar_share=d.unfamiliar_share, edge_confidence=d.edge_confidence,
                edge_label=d.edge_label,
            )
            for r, text, (_, d) in zip(results, texts, answered, strict=True)
        ]  # fmt: skip
        rows = [
            r.model_dump()
            | asdict(o)
            | {"text": text, "cloud_label": d.cloud_label, "masked_text": d.masked_text}
            for r, o, text, (_, d) in zip(results, observations, texts, answered, strict=True)
        ]
        await kept(audit.record, rows)  # no answer that the trail does not hold
        for r, observation in zip(results, observations, strict=True):
            monitor.record(observation)
            metrics.decisions.labels(r.model_version, r.route, r.reason).inc()
            metrics.cost.inc(r.cost)
            if r.reason == "cloud_error":
                metrics.cloud_errors.inc()
        metrics.latency.observe(elapsed)
        logger.info("classified %d texts in %.1f ms (%s)", len(texts), elapsed * 1000, results[0].request_id)
        return ClassifyResponse(model_version=champion, results=results)

    @app.post(
        "/v1/feedback",
        response_model=FeedbackResponse,
        dependencies=[authorised],
        responses=_errors(400, 401, 403, 404, 409, 413, 422, 429, 503),
    )
    async def feedback(body: FeedbackRequest, request: Request) -> FeedbackResponse:
        source = request.state.feedback_source
        if wait := feedback_limit.take(source):
            raise HTTPException(
                429, f"feedback source {source!r}: more than feedback.max_per_minute="
                f"{config.feedback.max_per_minute} posts a minute",
                headers={"Retry-After": str(math.ceil(wait))},
            )  # fmt: skip
        labels = {
            label for r in (releases.champion, releases.canary) if r is not None for label in r.router.labels
        }
        if body.label not in labels:
            raise HTTPException(422, f"label: {body.label!r} is not one of {sorted(labels)}")
        decision = await kept(audit.decision, body.request_id)
        if decision is None:
            raise HTTPException(404, f"request_id: no decision {body.request_id!r} in the audit trail")
        try:
            recorded = await kept(audit.feedback, body.request_id, body.label, source)
        except FeedbackConflict as conflict:
            raise HTTPException(409, str(conflict)) from None
        correct = monitor.feedback(body.request_id, body.label, source)
        if correct is not None and recorded:
            metrics.feedback.labels(decision["model_version"], str(correct).lower()).inc()
        return FeedbackResponse(request_id=body.request_id, source=source, correct=correct, recorded=recorded)

    @app.get(
        "/v1/health", response_model=HealthReport, dependencies=[authorised], responses=_errors(401, 403)
    )
    async def health() -> dict:
        extra = [f"cloud circuit {breaker.state}"] if breaker and breaker.state != "closed" else []
        served = {"role": config.role, "model_version": releases.champion.version, "canary": canary()}
        return monitor.report(extra) | served

    @app.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
    async def prometheus() -> Response:
        metrics.show(monitor.report())
        kept = audit.state()
        metrics.spooled.set(kept["spooled_rows"])
        metrics.dropped.set(kept["dropped_rows"])
        if breaker is not None:
            metrics.breaker.state(breaker.state)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", response_model=Readiness, responses={503: {"model": Problem}})
    async def readyz() -> Readiness:
        if audit.failure is not None:
            raise HTTPException(503, f"audit trail unavailable: {audit.failure}")
        return Readiness(
            status="ready",
            role=config.role,
            model_version=releases.champion.version,
            canary=canary(),
            cloud=None if breaker is None else breaker.state,
            cloud_constraint=getattr(getattr(releases.champion.router.cloud, "backend", None), "form", None),
            audit=AuditState(**audit.state()),
        )

    return app
