"""Cloud backends behind one interface, and the circuit breaker that guards them.

``local``: the bundle's FP32 ONNX model in this process (the embedded default).
``http``: another edgeroute service (``edgeroute serve --role cloud``) reached over HTTP, with
a timeout and bounded retries. Either is wrapped in a `CircuitBreaker`: after repeated
failures the router stops calling the cloud for a while (answering on the edge, reason
``cloud_error``), then lets one probe through and closes again when it succeeds.
"""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from edgeroute.config import BreakerConfig, CloudConfig
from edgeroute.model import OnnxClassifier

_CLOUD, _BREAKER = CloudConfig(), BreakerConfig()


@dataclass(frozen=True)
class Prediction:
    label: str
    confidence: float


class CloudRequestError(RuntimeError):
    """The cloud refused the request (a 4xx other than 408 and 429): the request's fault, not the
    cloud's, so the circuit breaker does not count it."""


class CloudUnavailable(RuntimeError):
    """The cloud was not called at all (the circuit is open)."""


class CloudBackend(Protocol):
    """The cloud tier: classifies (already masked) texts, in order, or raises."""

    name: str

    def classify(self, texts: Sequence[str]) -> list[Prediction]: ...


class LocalCloud:
    """The FP32 ONNX model of the bundle, in this process."""

    name = "local"

    def __init__(self, classifier: OnnxClassifier) -> None:
        self.classifier = classifier

    def classify(self, texts: Sequence[str]) -> list[Prediction]:
        probabilities = self.classifier.predict_proba(texts)
        labels = self.classifier.labels
        return [Prediction(labels[int(p.argmax())], float(p.max())) for p in probabilities]


class HttpCloud:
    """A cloud-role edgeroute service: ``POST {url}/v1/classify`` with ``{"texts": [...]}``.

    Connection errors, timeouts and 5xx answers are retried ``retries`` times with a doubling
    back-off; a 4xx answer is the caller's fault and is not retried.
    """

    name = "http"

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = _CLOUD.timeout_s,
        retries: int = _CLOUD.retries,
        max_text_chars: int = _CLOUD.max_text_chars,
        backoff_s: float = 0.05,
        api_key: str | None = None,
    ) -> None:
        self.endpoint = url.rstrip("/") + "/v1/classify"
        self.timeout_s = timeout_s
        self.retries = retries
        self.max_text_chars = max_text_chars
        self.backoff_s = backoff_s
        self.headers = {"Content-Type": "application/json"} | ({"X-API-Key": api_key} if api_key else {})

    def classify(self, texts: Sequence[str]) -> list[Prediction]:
        # Within the cloud's limit: masking lengthens a text (placeholders for digits).
        body = json.dumps({"texts": [t[: self.max_text_chars] for t in texts]}).encode()
        for attempt in range(self.retries + 1):
            request = urllib.request.Request(self.endpoint, body, self.headers, method="POST")
            try:
                with _OPENER.open(request, timeout=self.timeout_s) as response:
                    body = response.read()
                return predictions(body, len(texts), self.endpoint)
            except urllib.error.HTTPError as exc:
                # The status only: the body of an error may echo the texts it was sent.
                if exc.code < 500 and exc.code not in (408, 429):
                    raise CloudRequestError(f"{self.endpoint} answered {exc.code}") from None
                if attempt == self.retries:
                    raise RuntimeError(f"{self.endpoint} answered {exc.code}") from None
            except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
                if attempt == self.retries:
                    raise RuntimeError(f"{self.endpoint} unreachable: {exc}") from None
            time.sleep(self.backoff_s * 2**attempt)
        raise AssertionError("unreachable")


def origin(url: str) -> tuple[str, str]:
    """Scheme and host:port of ``url``: where a key may be sent."""
    parts = urllib.parse.urlsplit(url)
    return parts.scheme.lower(), parts.netloc.lower()


class _SameOriginRedirects(urllib.request.HTTPRedirectHandler):
    """Redirects are followed within the cloud's origin only: the API key goes nowhere else."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if origin(newurl) != origin(req.full_url):
            raise urllib.error.HTTPError(
                req.full_url, code, f"redirect to another origin refused: {newurl}", headers, fp
            )
        return super().redirect_request(req, fp, code, msg, headers, newurl)


_OPENER = urllib.request.build_opener(_SameOriginRedirects)


def predictions(body: bytes, expected: int, source: str) -> list[Prediction]:
    """The answers of a cloud service's body, each a label and a finite confidence in [0, 1]."""
    try:
        results = json.loads(body)["results"]
        answers = [Prediction(r["label"], float(r["confidence"])) for r in results]
    except (ValueError, KeyError, TypeError, RecursionError):
        raise RuntimeError(f"{source} answered a body that is not a list of results") from None
    if len(answers) != expected:
        raise RuntimeError(f"{source} answered {len(answers)} results for {expected} texts")
    for i, answer in enumerate(answers):
        if not isinstance(answer.label, str) or not 0 <= answer.confidence <= 1:  # NaN fails both bounds
            raise RuntimeError(f"{source}: result {i} has no label or a confidence outside [0, 1]")
    return answers


class CircuitBreaker:
    """Closed, open after ``failure_threshold`` failures in a row, half-open after ``reset_after_s``.

    Half-open lets one call through: success closes the circuit, failure opens it again.
    """

    def __init__(
        self,
        failure_threshold: int = _BREAKER.failures,
        reset_after_s: float = _BREAKER.reset_s,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.failure_threshold = failure_threshold
        self.reset_after_s = reset_after_s
        self.clock = clock
        self.failures = 0
        self.opened_at: float | None = None
        self.probing = False
        self._lock = threading.Lock()

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return "closed"
        return "half_open" if self.clock() - self.opened_at >= self.reset_after_s else "open"

    def allow(self) -> bool:
        with self._lock:
            state = self.state
            if state == "closed":
                return True
            if state == "half_open" and not self.probing:
                self.probing = True
                return True
            return False

    def record(self, success: bool) -> None:
        with self._lock:
            self.probing = False
            if success:
                self.failures, self.opened_at = 0, None
                return
            self.failures += 1
            if self.opened_at is not None or self.failures >= self.failure_threshold:
                self.opened_at = self.clock()


class GuardedCloud:
    """A backend behind a circuit breaker."""

    def __init__(self, backend: CloudBackend, breaker: CircuitBreaker) -> None:
        self.backend = backend
        self.breaker = breaker
        self.name = backend.name

    def classify(self, texts: Sequence[str]) -> list[Prediction]:
        if not self.breaker.allow():
            raise CloudUnavailable(f"circuit open after {self.breaker.failures} failures")
        try:
            answers = self.backend.classify(texts)
        except CloudRequestError:
            self.breaker.record(True)  # the cloud answered: the request was at fault
            raise
        except Exception:
            self.breaker.record(False)
            raise
        self.breaker.record(True)
        return answers


def http_cloud(config: CloudConfig) -> HttpCloud:
    """The cloud-role service at ``config.url``, with the key of the ``config.api_key_env`` variable."""
    if config.url is None:
        raise ValueError("no cloud URL configured (cloud.url)")
    return HttpCloud(
        config.url,
        timeout_s=config.timeout_s,
        retries=config.retries,
        max_text_chars=config.max_text_chars,
        api_key=os.environ.get(config.api_key_env) or None,
    )
