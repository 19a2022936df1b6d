"""The router as an HTTP service (FastAPI): classify, feedback, health, Prometheus metrics.

``edge`` role: the INT8 model answers and escalates to its cloud tier (the bundle's FP32 model
in-process, or a remote cloud behind a circuit breaker). ``cloud`` role: the bundle's FP32
model answers every query; an edge-role service calls it for escalations.

This module is HTTP only: the keys and the body's size, checked once before a byte of the body
is read (`Gatekeeper`), the routes, and the errors as JSON. What the routes do is the
`edgeroute.service.RouterService`'s; the bodies are `edgeroute.schemas`.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import APIKeyHeader
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException

from edgeroute.access import Access, Denied
from edgeroute.schemas import (
    ClassifyRequest,
    ClassifyResponse,
    FeedbackRequest,
    FeedbackResponse,
    HealthReport,
    Invalid,
    Problem,
    Readiness,
)
from edgeroute.service import Refused, RouterService

API_KEY_HEADER = APIKeyHeader(name="X-API-Key", auto_error=False)
OPEN = Access()  # no key: every route open, a feedback source named by the client's address


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


def _message(error: dict) -> str:
    """A validation error's message, with the parser's reason when it gives one as text."""
    reason = (error.get("ctx") or {}).get("error")
    return f"{error['msg']} ({reason})" if isinstance(reason, str) else error["msg"]


def create_app(service: RouterService, access: Access = OPEN) -> FastAPI:
    """HTTP in front of ``service``, behind ``access``'s keys; the service starts and stops with
    the app."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await service.start()
        yield
        await service.stop()

    # With a key, the API's description is behind it too: GET /openapi.json with the key; no
    # interactive pages, which a browser could not open with the header. The keys are checked
    # once, by the Gatekeeper; the routes declare the header for the docs.
    keyed = {"docs_url": None, "redoc_url": None, "openapi_url": None} if access.api_key is not None else {}
    app = FastAPI(title="edgeroute", version=service.releases.champion.version, lifespan=lifespan, **keyed)
    app.state.releases = service.releases
    app.add_middleware(Gatekeeper, access=access, max_body_bytes=service.config.limits.max_body_bytes)
    authorised = [Security(API_KEY_HEADER)]
    if access.api_key is not None:
        app.add_api_route("/openapi.json", app.openapi, include_in_schema=False)
    handle_errors(app)

    @app.post("/v1/classify", response_model=ClassifyResponse, dependencies=authorised,
              responses=_errors(400, 401, 403, 413, 422, 503, 504))  # fmt: skip
    async def classify(body: ClassifyRequest) -> ClassifyResponse:
        return await service.classify(body.all_texts(), one=body.text is not None)

    @app.post("/v1/feedback", response_model=FeedbackResponse, dependencies=authorised,
              responses=_errors(400, 401, 403, 404, 409, 413, 422, 429, 503))  # fmt: skip
    async def feedback(body: FeedbackRequest, request: Request) -> FeedbackResponse:
        return await service.feedback(body.request_id, body.label, request.state.feedback_source)

    @app.get("/v1/health", response_model=HealthReport, dependencies=authorised, responses=_errors(401, 403))
    async def health() -> dict:
        return service.health()

    @app.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
    async def prometheus() -> Response:
        return Response(service.prometheus(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", response_model=Readiness, responses={503: {"model": Problem}})
    async def readyz() -> Readiness:
        return service.readiness()

    return app


def handle_errors(app: FastAPI) -> None:
    """Every error answered as JSON: the service's refusals, HTTP's own and invalid bodies."""

    @app.exception_handler(Refused)
    async def _refused(request: Request, exc: Refused) -> JSONResponse:
        return JSONResponse({"detail": exc.detail}, status_code=exc.status, headers=exc.headers)

    # Starlette's class, so that FastAPI's own errors (an unreadable body, 404, 405) come here too.
    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
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
