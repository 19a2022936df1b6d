"""The router as a service, apart from HTTP: what `edgeroute serve` runs (`RouterService`).

A service is built from a `ServeConfig`, the loaded releases (champion and canary), the audit
trail and the monitor. It owns the micro-batcher, the remote cloud's threads, the metrics, the
followers that swap new versions in, and the purge of old audit rows; it offers `classify`,
`feedback`, `health`, `readiness` and `prometheus`, and `start` and `stop`. `edgeroute.server`
puts HTTP in front of it. A request it refuses raises `Refused` with the HTTP status it means.

Every decision goes to the audit trail (a keyed hash of the text, never the text) and to the
monitor, whose window is rebuilt from the trail at start; logs carry request ids and counts,
never message text.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from typing import Any, TypeVar

from fastapi.concurrency import run_in_threadpool
from prometheus_client import generate_latest

from edgeroute.access import RateLimit
from edgeroute.audit import AuditUnavailable, FeedbackConflict, Trail
from edgeroute.batching import MicroBatcher
from edgeroute.cloud import CircuitBreaker, GuardedCloud
from edgeroute.config import ServeConfig
from edgeroute.metrics import Metrics
from edgeroute.monitor import Monitor, Observation
from edgeroute.privacy import normalize
from edgeroute.releases import Follower, Release, Releases, Slot
from edgeroute.router import Decision, Router, unicode_problem
from edgeroute.schemas import AuditState, Canary, ClassifyResponse, FeedbackResponse, Readiness, Result

logger = logging.getLogger("edgeroute.server")
T = TypeVar("T")
PURGE_EVERY_S = 3600.0  # how often rows past audit.retention_days are looked for


class Refused(Exception):
    """A request the service does not answer, with the HTTP status it means and why."""

    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.detail, self.headers = status, detail, headers


async def kept(use: Callable[..., T], *args: Any) -> T:
    """``use(*args)`` of the audit trail on a worker thread, so that a wait for its lock never
    holds the event loop (the probes answer meanwhile); 503 while the trail cannot be used."""
    try:
        return await run_in_threadpool(use, *args)
    except AuditUnavailable as exc:
        raise Refused(503, f"audit trail unavailable: {exc}", {"Retry-After": "1"}) from None


def breaker_of(router: Router) -> CircuitBreaker | None:
    return router.cloud.breaker if isinstance(router.cloud, GuardedCloud) else None


def restore_window(monitor: Monitor, audit: Trail) -> int:
    """The monitor's window refilled from the audit trail (at most its ``max_events``)."""
    thresholds = monitor.thresholds
    rows = audit.recent(monitor.clock() - thresholds.window_s, thresholds.max_events)
    return monitor.restore(Observation.from_audit(row) for row in rows)


class RouterService:
    """The loaded releases served: nothing is loaded per request, and ``followers`` swap new
    versions in while it runs (between `start` and `stop`)."""

    def __init__(
        self,
        releases: Releases,
        audit: Trail,
        monitor: Monitor,
        config: ServeConfig,
        followers: Sequence[Follower] = (),
    ) -> None:
        self.releases, self.audit, self.monitor, self.config = releases, audit, monitor, config
        self.followers = followers
        self.metrics = Metrics()
        self.breaker = breaker_of(releases.champion.router)
        self.feedback_limit = RateLimit(config.feedback.max_per_minute)
        releases.listeners.append(self._installed)
        for slot in ("champion", "canary"):
            if getattr(releases, slot) is not None:
                self._installed(slot, getattr(releases, slot), None)
        if restored := restore_window(monitor, audit):
            logger.info("monitor window rebuilt from %d decisions of the audit trail", restored)
        batching = config.batching
        self.batcher = (
            MicroBatcher(self._on_edge, max_texts=batching.max_texts, max_wait_s=batching.wait_ms / 1000,
                         workers=batching.workers or os.cpu_count() or 1)
            if batching.max_texts
            else None
        )  # fmt: skip
        # A remote cloud's calls wait on threads of their own, never on the edge's: a slow cloud
        # cannot hold an answer the edge gives alone.
        self.cloud_calls = ThreadPoolExecutor(
            config.cloud.max_concurrency, thread_name_prefix="edgeroute-cloud"
        )
        self._tasks: list[asyncio.Task] = []

    def _installed(self, slot: Slot, release: Release, old: Release | None) -> None:
        if old is not None:
            self.metrics.model_info.remove(slot, old.version)
        self.metrics.model_info.labels(slot, release.version).set(1)
        self.metrics.timed(release)
        if slot == "champion":
            self.monitor.serve(release.version, release.profile)

    async def start(self) -> None:
        """The followers, and the hourly purge of rows past ``audit.retention_days``."""
        self._tasks = [
            asyncio.create_task(f.run(), name=f"edgeroute-follow-{f.slot}") for f in self.followers
        ]
        if self.config.audit.retention_days is not None:
            self._tasks.append(asyncio.create_task(self._purge(), name="edgeroute-audit-retention"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.batcher is not None:
            await self.batcher.close()
        self.cloud_calls.shutdown(wait=False, cancel_futures=True)

    async def _purge(self) -> None:
        """Every hour, from start: the rows past ``audit.retention_days`` removed."""
        while True:
            cutoff = time.time() - self.config.audit.retention_days * 86400
            try:
                removed = await run_in_threadpool(self.audit.purge, cutoff)
            except AuditUnavailable as exc:
                logger.warning("audit trail: no purge now, tried again in an hour (%s)", exc)
                removed = 0
            if removed:
                logger.info("audit trail: %d decisions past audit.retention_days purged", removed)
            await asyncio.sleep(PURGE_EVERY_S)

    def _on_edge(self, texts: list[str], release: Release) -> list[Decision]:
        self.metrics.batch_size.observe(len(texts))
        return release.decide_on_edge(texts)

    async def _escalate(self, router: Router, decisions: list[Decision]) -> list[Decision]:
        """The cloud's answers to the texts that wait for it, within ``cloud.answer_within_s`` (half
        the request's budget by default); past that the edge answers them, and the call counts
        as a failure of the circuit."""
        guard = breaker_of(router)
        # No cloud, or an open circuit: not even queued behind calls that hang.
        if router.cloud is None or (guard is not None and guard.state == "open"):
            return router.settle(decisions, None, False)
        call = self.cloud_calls.submit(router.ask_cloud, router.sent_texts(decisions))
        within = self.config.cloud_wait_s
        try:
            answers, attempted = await asyncio.wait_for(asyncio.wrap_future(call), within)
        except TimeoutError:
            attempted = not call.cancel()  # a call still queued is cancelled: it never reached the cloud
            if guard is not None:
                guard.record(False)
            logger.warning("cloud tier: no answer within cloud.answer_within_s=%g s", within)
            answers = None
        return router.settle(decisions, answers, attempted)

    async def _decide(self, release: Release, texts: list[str]) -> list[Decision]:
        if self.batcher and release.batch_independent:
            decisions = await self.batcher.submit(texts, release)
        else:
            decisions = await run_in_threadpool(self._on_edge, texts, release)
        router = release.escalating
        if router is None or not router.to_cloud(decisions):
            return decisions
        return await self._escalate(router, decisions)

    async def _answer(self, texts: list[str], ids: list[str]) -> list[tuple[Release, Decision]]:
        """Each text's answer, from the release its request id picks, in order."""
        groups: dict[Release, list[int]] = {}
        for i, release in enumerate(self.releases.pick(ids)):
            groups.setdefault(release, []).append(i)
        answers = await asyncio.gather(
            *(self._decide(r, [texts[i] for i in group]) for r, group in groups.items())
        )
        answered: dict[int, tuple[Release, Decision]] = {}
        for (release, group), decisions in zip(groups.items(), answers, strict=True):
            answered |= {i: (release, d) for i, d in zip(group, decisions, strict=True)}
        return [answered[i] for i in range(len(texts))]

    def check(self, texts: list[str], one: bool) -> None:
        """`Refused` for a request the limits do not let through, naming the text at fault
        (``text`` for ``one``, else ``texts[i]``)."""
        limits = self.config.limits
        if not texts:
            raise Refused(422, "texts: the batch is empty")
        if len(texts) > limits.max_batch:
            raise Refused(413, f"texts: {len(texts)} texts in one request; at most {limits.max_batch}")
        for i, text in enumerate(texts):
            where = "text" if one else f"texts[{i}]"
            if len(text) > limits.max_text_chars:
                raise Refused(413, f"{where}: {len(text)} characters; at most {limits.max_text_chars}")
            # What the masker and the cloud read: NFKC can make a text many times longer.
            if (normal := len(normalize(text))) > limits.max_text_chars:
                raise Refused(
                    413,
                    f"{where}: {normal} characters once normalised (NFKC); at most {limits.max_text_chars}",
                )
            if not text.strip():
                raise Refused(422, f"{where}: empty text")
            if problem := unicode_problem(text):
                raise Refused(422, f"{where}: {problem}")

    async def classify(self, texts: list[str], one: bool = False) -> ClassifyResponse:
        """Every text answered (`check` first), recorded in the audit trail before it is
        returned, then in the monitor and the metrics; 504 past ``limits.timeout_s``."""
        self.check(texts, one)
        ids = [uuid.uuid4().hex for _ in texts]
        champion = self.releases.champion.version
        start = time.perf_counter()
        try:
            answered = await asyncio.wait_for(self._answer(texts, ids), self.config.limits.timeout_s)
        except TimeoutError:
            raise Refused(504, f"no answer within {self.config.limits.timeout_s:g} s") from None
        elapsed = time.perf_counter() - start
        shared = [k for k in Result.model_fields if k not in ("request_id", "model_version")]
        results = [
            Result(request_id=request_id, model_version=release.version, **{k: getattr(d, k) for k in shared})
            for request_id, (release, d) in zip(ids, answered, strict=True)
        ]
        await self._record(texts, results, [d for _, d in answered], elapsed)
        logger.info("classified %d texts in %.1f ms (%s)", len(texts), elapsed * 1000, results[0].request_id)
        return ClassifyResponse(model_version=champion, results=results)

    async def _record(
        self, texts: list[str], results: list[Result], decided: list[Decision], elapsed: float
    ) -> None:
        """The answers in the audit trail (no answer that the trail does not hold), then in the
        monitor and the metrics."""
        now = time.time()
        observations = [
            Observation(
                request_id=r.request_id, time=now, model_version=r.model_version, route=r.route,
                label=r.label, cost=r.cost, latency_ms=elapsed * 1000, complexity=r.complexity,
                length=len(text), unfamiliar_share=d.unfamiliar_share, edge_confidence=d.edge_confidence,
                edge_label=d.edge_label,
            )
            for r, text, d in zip(results, texts, decided, strict=True)
        ]  # fmt: skip
        rows = [
            r.model_dump()
            | asdict(o)
            | {"text": text, "cloud_label": d.cloud_label, "masked_text": d.masked_text}
            for r, o, text, d in zip(results, observations, texts, decided, strict=True)
        ]
        await kept(self.audit.record, rows)
        metrics = self.metrics
        for r, observation in zip(results, observations, strict=True):
            self.monitor.record(observation)
            metrics.decisions.labels(r.model_version, r.route, r.reason).inc()
            metrics.cost.inc(r.cost)
            if r.reason == "cloud_error":
                metrics.cloud_errors.inc()
        metrics.latency.observe(elapsed)

    async def feedback(self, request_id: str, label: str, source: str) -> FeedbackResponse:
        """The true ``label`` of an answered request, from ``source``: recorded once, within the
        source's rate (429 past it); 422 for a label no served version knows, 404 for a request
        the trail does not hold, 409 for another label than the one recorded."""
        if wait := self.feedback_limit.take(source):
            per_minute = self.config.feedback.max_per_minute
            raise Refused(
                429, f"feedback source {source!r}: more than feedback.max_per_minute={per_minute} "
                "posts a minute", {"Retry-After": str(math.ceil(wait))},
            )  # fmt: skip
        served = (self.releases.champion, self.releases.canary)
        labels = {known for r in served if r is not None for known in r.router.labels}
        if label not in labels:
            raise Refused(422, f"label: {label!r} is not one of {sorted(labels)}")
        decision = await kept(self.audit.decision, request_id)
        if decision is None:
            raise Refused(404, f"request_id: no decision {request_id!r} in the audit trail")
        try:
            recorded = await kept(self.audit.feedback, request_id, label, source)
        except FeedbackConflict as conflict:
            raise Refused(409, str(conflict)) from None
        correct = self.monitor.feedback(request_id, label, source)
        if correct is not None and recorded:
            self.metrics.feedback.labels(decision["model_version"], str(correct).lower()).inc()
        return FeedbackResponse(request_id=request_id, source=source, correct=correct, recorded=recorded)

    def canary(self) -> Canary | None:
        release = self.releases.canary
        return (
            None
            if release is None
            else Canary(model_version=release.version, share=self.releases.canary_share)
        )

    def health(self) -> dict:
        """The monitor's health report, with the role, the champion and the canary."""
        breaker = self.breaker
        extra = [f"cloud circuit {breaker.state}"] if breaker and breaker.state != "closed" else []
        served = {
            "role": self.config.role,
            "model_version": self.releases.champion.version,
            "canary": self.canary(),
        }
        return self.monitor.report(extra) | served

    def prometheus(self) -> bytes:
        """The metrics, with the window's figures, the spool and the circuit as they are now."""
        metrics = self.metrics
        metrics.show(self.monitor.report())
        trail = self.audit.state()
        metrics.spooled.set(trail["spooled_rows"])
        metrics.dropped.set(trail["dropped_rows"])
        if self.breaker is not None:
            metrics.breaker.state(self.breaker.state)
        return generate_latest(metrics.registry)

    def readiness(self) -> Readiness:
        """Ready, with what is served; 503 while the audit trail cannot be written."""
        if self.audit.failure is not None:
            raise Refused(503, f"audit trail unavailable: {self.audit.failure}")
        champion = self.releases.champion
        return Readiness(
            status="ready",
            role=self.config.role,
            model_version=champion.version,
            canary=self.canary(),
            cloud=None if self.breaker is None else self.breaker.state,
            cloud_constraint=getattr(getattr(champion.router.cloud, "backend", None), "form", None),
            audit=AuditState(**self.audit.state()),
        )
