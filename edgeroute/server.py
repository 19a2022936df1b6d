"""The router as an HTTP service (FastAPI): classify, feedback, health, Prometheus metrics.

``edge`` role: the INT8 model answers and escalates to its cloud tier (the bundle's FP32 model
in-process, or a cloud-role service over HTTP behind a circuit breaker). ``cloud`` role: the
bundle's FP32 model answers every query; an edge-role service calls it for escalations.

Every decision goes to the audit trail (a keyed hash of the text, never the text) and to the
monitor; logs carry request ids and counts, never message text.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import APIKeyHeader
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from edgeroute.audit import AuditLog, FeedbackConflict
from edgeroute.batching import MicroBatcher
from edgeroute.bundle import Bundle
from edgeroute.cloud import CircuitBreaker, GuardedCloud
from edgeroute.config import ServeConfig
from edgeroute.monitor import Monitor
from edgeroute.router import Decision, Router, unicode_problem

logger = logging.getLogger("edgeroute.server")
BREAKER_STATES = {"closed": 0, "half_open": 1, "open": 2}
API_KEY_HEADER = APIKeyHeader(name="X-API-Key", auto_error=False)


def key_matches(given: bytes | None, api_key: str) -> bool:
    """Constant-time comparison of the header's bytes with the key (non-ASCII keys included)."""
    return bool(given) and secrets.compare_digest(given, api_key.encode("utf-8"))


class Gatekeeper:
    """ASGI middleware that answers before the app reads a byte of the body: the API key of
    ``/v1/*`` requests (401), then the declared size and, while it streams in, the actual size
    of the body (413 past ``max_body_bytes``; the reading stops there)."""

    def __init__(self, app, *, api_key: str | None, max_body_bytes: int) -> None:
        self.app, self.api_key, self.max_body_bytes = app, api_key, max_body_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        keyed = self.api_key is not None and scope["path"].startswith("/v1/")
        if keyed and not key_matches(headers.get(b"x-api-key"), self.api_key):
            await _answer(send, 401, "missing or wrong API key (header X-API-Key)")
            return
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
    label: str
    confidence: float | None
    route: str
    reason: str
    cost: float
    complexity: float


class ClassifyResponse(BaseModel):
    model_version: str
    results: list[Result]


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    request_id: str = Field(min_length=1, max_length=64)
    label: str = Field(min_length=1, max_length=200)


class CloudTier:
    """The cloud role: the FP32 model answers everything, at the cloud's price."""

    def __init__(self, router: Router) -> None:
        self.router = router

    def route(self, texts: Sequence[str]) -> list[Decision]:
        answers = self.router.cloud.classify(texts)
        cost = self.router.settings.costs.cloud
        return [
            Decision(
                label=a.label, confidence=a.confidence, route="cloud", reason="cloud_service", cost=cost,
                complexity=0.0, unfamiliar_share=0.0, edge_label=a.label, edge_confidence=a.confidence,
            )
            for a in answers
        ]  # fmt: skip


class Metrics:
    """The service's Prometheus metrics, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.decisions = Counter(
            "edgeroute_decisions",
            "Routed queries by route and reason.",
            ["route", "reason"],
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
            "edgeroute_request_latency_seconds",
            "Time to answer a classify request.",
            buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5),
            registry=self.registry,
        )
        self.edge_share = Gauge(
            "edgeroute_edge_share", "Edge share over the monitor's window.", registry=self.registry
        )
        self.breaker = Gauge(
            "edgeroute_cloud_breaker_state",
            "Cloud circuit: 0 closed, 1 half-open, 2 open.",
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "edgeroute_batch_texts",
            "Texts per model call (micro-batches of concurrent requests).",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=self.registry,
        )
        self.feedback = Counter(
            "edgeroute_feedback",
            "Feedback received, by whether the answer was right.",
            ["correct"],
            registry=self.registry,
        )


def _message(error: dict) -> str:
    """A validation error's message, with the parser's reason when it gives one as text."""
    reason = (error.get("ctx") or {}).get("error")
    return f"{error['msg']} ({reason})" if isinstance(reason, str) else error["msg"]


def breaker_of(router: Router) -> CircuitBreaker | None:
    return router.cloud.breaker if isinstance(router.cloud, GuardedCloud) else None


def create_app(
    router: Router,
    audit: AuditLog,
    monitor: Monitor,
    config: ServeConfig,
    *,
    model_version: str,
    api_key: str | None = None,
) -> FastAPI:
    """The service around a loaded router; nothing is loaded per request."""
    tier = router if config.role == "edge" else CloudTier(router)
    labels = set(router.labels)
    metrics = Metrics()
    breaker = breaker_of(router)

    def authorised(key: Annotated[str | None, Depends(API_KEY_HEADER)]) -> None:
        # The header arrives decoded as Latin-1: its bytes again, as the middleware compares them.
        if api_key is not None and not key_matches(key.encode("latin-1") if key else None, api_key):
            raise HTTPException(401, "missing or wrong API key (header X-API-Key)")

    def route(texts: list[str]) -> list[Decision]:
        metrics.batch_size.observe(len(texts))
        return tier.route(texts)

    batcher = (
        MicroBatcher(
            route,
            max_texts=config.batching.max_texts,
            max_wait_s=config.batching.wait_ms / 1000,
            workers=config.batching.workers or os.cpu_count() or 1,
        )
        if config.batching.max_texts
        else None
    )

    async def decide(texts: list[str]) -> list[Decision]:
        return await (batcher.submit(texts) if batcher else run_in_threadpool(route, texts))

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        if batcher is not None:
            await batcher.close()

    # With a key, the API's description is behind it too: GET /openapi.json with the key; no
    # interactive pages, which a browser could not open with the header.
    keyed = {"docs_url": None, "redoc_url": None, "openapi_url": None} if api_key is not None else {}
    app = FastAPI(title="edgeroute", version=model_version, lifespan=lifespan, **keyed)
    app.add_middleware(Gatekeeper, api_key=api_key, max_body_bytes=config.limits.max_body_bytes)
    if api_key is not None:

        @app.get("/openapi.json", include_in_schema=False, dependencies=[Depends(authorised)])
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

    @app.post("/v1/classify", response_model=ClassifyResponse, dependencies=[Depends(authorised)])
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
            if not text.strip():
                raise HTTPException(422, f"{where}: empty text")
            if problem := unicode_problem(text):
                raise HTTPException(422, f"{where}: {problem}")
        start = time.perf_counter()
        try:
            decisions = await asyncio.wait_for(decide(texts), config.limits.timeout_s)
        except TimeoutError:
            raise HTTPException(504, f"no answer within {config.limits.timeout_s:g} s") from None
        elapsed = time.perf_counter() - start
        results = [
            Result(
                request_id=uuid.uuid4().hex,
                **{k: getattr(d, k) for k in Result.model_fields if k != "request_id"},
            )
            for d in decisions
        ]
        audit.record(
            r.model_dump() | {"model_version": model_version, "text": text}
            for r, text in zip(results, texts, strict=True)
        )
        for r in results:
            monitor.record(r.request_id, r.route, r.cost, elapsed * 1000, r.complexity, r.label)
            metrics.decisions.labels(r.route, r.reason).inc()
            metrics.cost.inc(r.cost)
            if r.reason == "cloud_error":
                metrics.cloud_errors.inc()
        metrics.latency.observe(elapsed)
        logger.info("classified %d texts in %.1f ms (%s)", len(texts), elapsed * 1000, results[0].request_id)
        return ClassifyResponse(model_version=model_version, results=results)

    @app.post("/v1/feedback", dependencies=[Depends(authorised)])
    async def feedback(body: FeedbackRequest) -> dict:
        if body.label not in labels:
            raise HTTPException(422, f"label: {body.label!r} is not one of {sorted(labels)}")
        if audit.decision(body.request_id) is None:
            raise HTTPException(404, f"request_id: no decision {body.request_id!r} in the audit trail")
        try:
            recorded = audit.feedback(body.request_id, body.label)
        except FeedbackConflict as conflict:
            raise HTTPException(409, str(conflict)) from None
        correct = monitor.feedback(body.request_id, body.label)
        if correct is not None and recorded:
            metrics.feedback.labels(str(correct).lower()).inc()
        return {"request_id": body.request_id, "correct": correct, "recorded": recorded}

    @app.get("/v1/health", dependencies=[Depends(authorised)])
    async def health() -> dict:
        extra = [f"cloud circuit {breaker.state}"] if breaker and breaker.state != "closed" else []
        return monitor.report(extra) | {"role": config.role, "model_version": model_version}

    @app.get("/metrics")
    async def prometheus() -> Response:
        report = monitor.report()
        metrics.edge_share.set(report["metrics"]["edge_share"] or 0.0)
        if breaker is not None:
            metrics.breaker.set(BREAKER_STATES[breaker.state])
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> dict:
        return {
            "status": "ready",
            "role": config.role,
            "model_version": model_version,
            "cloud": None if breaker is None else breaker.state,
        }

    return app


def model_version(bundle: Bundle, registered: str | None = None) -> str:
    """What the service reports as its model: the registry version, else the training run."""
    return registered or str(bundle.manifest["lineage"].get("mlflow_run_id") or bundle.path.name)
