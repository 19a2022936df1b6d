"""Cloud backends behind one interface, and the circuit breaker that guards them.

``local``: the bundle's FP32 ONNX model in this process (the embedded default).
``edgeroute``: another edgeroute service (``edgeroute serve --role cloud``) reached over HTTP,
with a timeout and bounded retries.
``openai``: any OpenAI-compatible chat-completions API (a hosted LLM, vLLM, TGI): one completion
per text, its answer kept to the labels, its confidence from log-probabilities, its cost from
its token usage, its answers optionally kept on disk (`AnswerCache`).
Each is wrapped in a `CircuitBreaker`: after repeated failures the router stops calling the
cloud for a while (answering on the edge, reason ``cloud_error``), then lets one probe through
and closes again when it succeeds.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from edgeroute.config import BreakerConfig, CloudConfig
from edgeroute.model import OnnxClassifier

logger = logging.getLogger(__name__)

ANSWER_TOKENS = 64  # max_tokens of every request: a label, or the JSON object that holds it
# The most a cloud may answer to one call: read up to it, never further (a hostile or broken
# server can send gigabytes). An edgeroute cloud's answer to 256 texts is about 80 KB.
MAX_ANSWER_BYTES = 8 << 20
TEMPLATE_TOKENS = 512  # what a chat template may add to a prompt, at most

_CLOUD, _BREAKER = CloudConfig(), BreakerConfig()


@dataclass(frozen=True)
class Prediction:
    """A cloud answer: its label, its confidence (None: the backend gives none, and the answer
    is final), and what it cost when the backend prices it (None: the router's cloud cost)."""

    label: str
    confidence: float | None
    cost: float | None = None


class CloudRequestError(RuntimeError):
    """The cloud refused the request (a 4xx other than 408 and 429): the request's fault, not the
    cloud's, so the circuit breaker does not count it."""


class CloudUnavailable(RuntimeError):
    """The cloud was not called at all (the circuit is open)."""


class CloudBackend(Protocol):
    """The cloud tier: classifies (already masked) texts, in order, or raises. An answer may be
    None: that text failed alone (a refusal, a label outside the set), the others did not."""

    name: str

    def classify(self, texts: Sequence[str]) -> list[Prediction | None]: ...


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
    """The ``edgeroute`` backend, a cloud-role edgeroute service: ``POST {url}/v1/classify`` with
    ``{"texts": [...]}``.

    Connection errors, timeouts and 5xx answers are retried ``max_retries`` times with a doubling
    back-off; a 4xx answer is the caller's fault and is not retried.
    """

    name = "edgeroute"

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = _CLOUD.timeout_s,
        max_retries: int = _CLOUD.max_retries,
        max_text_chars: int = _CLOUD.max_text_chars,
        max_batch: int = _CLOUD.max_batch,
        backoff_s: float = 0.05,
        api_key: str | None = None,
    ) -> None:
        self.endpoint = url.rstrip("/") + "/v1/classify"
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.max_text_chars = max_text_chars
        self.max_batch = max_batch
        self.backoff_s = backoff_s
        self.headers = {"Content-Type": "application/json"} | ({"X-API-Key": api_key} if api_key else {})

    def classify(self, texts: Sequence[str]) -> list[Prediction]:
        """One call per ``max_batch`` texts, the cloud service's limit, in order."""
        return [
            answer
            for start in range(0, len(texts), self.max_batch)
            for answer in self._call(texts[start : start + self.max_batch])
        ]

    def _call(self, texts: Sequence[str]) -> list[Prediction]:
        # Within the cloud's limit: masking lengthens a text (placeholders for digits).
        body = json.dumps({"texts": [t[: self.max_text_chars] for t in texts]}).encode()
        for attempt in range(self.max_retries + 1):
            request = urllib.request.Request(self.endpoint, body, self.headers, method="POST")
            try:
                started = time.monotonic()
                with SAME_ORIGIN.open(request, timeout=self.timeout_s) as response:
                    declared = int(response.headers.get("Content-Length") or 0)
                    chunks = iter(lambda r=response: r.read1(1 << 16), b"")
                    answer = read_within(chunks, started + self.timeout_s, declared)
                if answer is None:
                    raise RuntimeError(f"{self.endpoint} answered more than {MAX_ANSWER_BYTES} bytes")
                return predictions(answer, len(texts), self.endpoint)
            except urllib.error.HTTPError as exc:
                # The status only: the body of an error may echo the texts it was sent.
                if exc.code < 500 and exc.code not in (408, 429):
                    raise CloudRequestError(f"{self.endpoint} answered {exc.code}") from None
                if attempt == self.max_retries:
                    raise RuntimeError(f"{self.endpoint} answered {exc.code}") from None
            except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
                if attempt == self.max_retries:
                    raise RuntimeError(f"{self.endpoint} unreachable: {exc}") from None
            time.sleep(self.backoff_s * 2**attempt)
        raise AssertionError("unreachable")


def origin(url: str) -> tuple[str, str]:
    """Scheme and host:port of ``url``: where a key may be sent."""
    parts = urllib.parse.urlsplit(url)
    return parts.scheme.lower(), parts.netloc.lower()


class _SameOriginRedirects(urllib.request.HTTPRedirectHandler):
    """Redirects are followed within the origin asked only: the API key goes nowhere else."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if origin(newurl) != origin(req.full_url):
            raise urllib.error.HTTPError(
                req.full_url, code, f"redirect to another origin refused: {newurl}", headers, fp
            )
        return super().redirect_request(req, fp, code, msg, headers, newurl)


SAME_ORIGIN = urllib.request.build_opener(_SameOriginRedirects)  # urlopen that keeps keys at home


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
    """A backend behind a circuit breaker; ``observe(seconds, outcome)``, when set, is told how
    long each call took and whether it was ``answered`` or ``failed``."""

    def __init__(
        self,
        backend: CloudBackend,
        breaker: CircuitBreaker,
        observe: Callable[[float, str], None] | None = None,
    ) -> None:
        self.backend = backend
        self.breaker = breaker
        self.name = backend.name
        self.observe = observe

    def classify(self, texts: Sequence[str]) -> list[Prediction]:
        if not self.breaker.allow():
            raise CloudUnavailable(f"circuit open after {self.breaker.failures} failures")
        began = time.perf_counter()
        outcome = "failed"
        try:
            answers = self.backend.classify(texts)
            outcome = "answered"
        except CloudRequestError:
            self.breaker.record(True)  # the cloud answered: the request was at fault
            raise
        except Exception:
            self.breaker.record(False)
            raise
        finally:
            if self.observe is not None:
                self.observe(time.perf_counter() - began, outcome)
        self.breaker.record(True)
        return answers


def remote_cloud(config: CloudConfig, labels: Sequence[str]) -> HttpCloud | OpenAICloud:
    """The ``edgeroute`` or ``openai`` backend of ``config``, with the key of its ``api_key_env``."""
    if config.url is None or config.backend == "local":
        raise ValueError("no remote cloud configured (cloud.backend and cloud.url)")
    api_key = os.environ.get(config.api_key_env) or None
    if config.backend == "openai":
        cache = AnswerCache(config.cache_dir) if config.cache_dir is not None else None
        return OpenAICloud(config, labels, api_key=api_key, cache=cache)
    return HttpCloud(
        config.url,
        timeout_s=config.timeout_s,
        max_retries=config.max_retries,
        max_text_chars=config.max_text_chars,
        max_batch=config.max_batch,
        api_key=api_key,
    )


class AnswerCache:
    """Cloud answers on disk, one JSON file each, keyed by everything that decides the answer
    (URL, model, prompt, constraint and the masked text): a re-run never pays twice."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    @staticmethod
    def key(*parts: object) -> str:
        return hashlib.sha256(json.dumps(parts, ensure_ascii=False).encode()).hexdigest()

    def _path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.json"

    def get(self, key: str) -> Prediction | None:
        try:
            return Prediction(**json.loads(self._path(key).read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError):  # absent, or a torn or foreign file: ask again
            return None

    def put(self, key: str, answer: Prediction) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as handle:
            json.dump(asdict(answer), handle)
        os.replace(handle.name, path)


class _Transient(RuntimeError):
    """A failure worth retrying (no connection, a timeout, 408, 429, 5xx), with the wait the
    server asked for, if any (``Retry-After``)."""

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class _BadAnswer(RuntimeError):
    """An answer that is not one of the labels: malformed, a refusal, or outside the set."""


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:  # an HTTP date: not worth parsing, back off as usual
        return None


class OpenAICloud:
    """The ``openai`` backend: an OpenAI-compatible ``POST {url}/chat/completions``, one per text,
    up to ``max_concurrency`` at once over one pooled connection set.

    The answer is kept to the labels (``response_format`` with a JSON schema whose ``label`` is
    an enum, or vLLM's ``guided_choice``); its confidence is the probability of the answer's
    tokens when the server returns log-probabilities (under constrained decoding the tokens
    around the label are forced, so this is the label's probability), else None. Transient
    failures are retried with jittered exponential back-off, or after the ``Retry-After`` a 429
    asks for, within ``deadline_s`` a text. A text whose answer is malformed, a refusal or
    outside the labels fails alone (None); the call raises only when every text failed on the
    server's side, which the circuit breaker counts.
    """

    name = "openai"

    def __init__(
        self,
        config: CloudConfig,
        labels: Sequence[str],
        *,
        api_key: str | None = None,
        cache: AnswerCache | None = None,
        backoff_s: float = 0.2,
    ) -> None:
        import httpx

        self.config, self.labels, self.cache, self.backoff_s = config, list(labels), cache, backoff_s
        self.endpoint = config.url.rstrip("/") + "/chat/completions"
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.Client(
            headers=headers,
            timeout=config.timeout_s,
            follow_redirects=False,  # the key goes to this origin only
            limits=httpx.Limits(max_connections=config.max_concurrency),
        )
        self.pool = ThreadPoolExecutor(config.max_concurrency, thread_name_prefix="openai-cloud")
        self._schema = {
            "type": "json_schema",
            "json_schema": {
                "name": "classification",
                "strict": True,
                "schema": {
                    "type": "object",
                    "properties": {"label": {"type": "string", "enum": self.labels}},
                    "required": ["label"],
                    "additionalProperties": False,
                },
            },
        }

    def request_body(self, text: str) -> dict[str, Any]:
        """The chat completion asked for one (masked) text."""
        prompt = self.config.prompt.replace("{labels}", ", ".join(self.labels))
        body: dict[str, Any] = {
            "model": self.config.model,
            "messages": [
                {"role": "user", "content": prompt.replace("{text}", text[: self.config.max_text_chars])}
            ],
            "temperature": 0,
            "max_tokens": ANSWER_TOKENS,
        }
        if self.config.logprobs:
            body["logprobs"] = True
        if self.config.constraint == "guided_choice":
            body["guided_choice"] = self.labels
        else:
            body["response_format"] = self._schema
        return body

    def classify(self, texts: Sequence[str]) -> list[Prediction | None]:
        if self.cache is not None:
            # One request a distinct text, as the cache promises, even when a call repeats one:
            # asked at once, each copy would miss the cache.
            unique = list(dict.fromkeys(texts))
            answered = dict(zip(unique, self.pool.map(self._answer, unique), strict=True))
            outcomes = [answered[text] for text in texts]
        else:
            outcomes = list(self.pool.map(self._answer, texts))
        if outcomes and all(isinstance(o, _Transient) for o in outcomes):
            raise RuntimeError(f"{self.endpoint}: {outcomes[0]}") from None
        return [o if isinstance(o, Prediction) else None for o in outcomes]

    def _answer(self, text: str) -> Prediction | Exception:
        config = self.config
        key = AnswerCache.key(
            self.endpoint, config.model, config.prompt, config.constraint, self.labels, text
        )
        if self.cache is not None and (cached := self.cache.get(key)) is not None:
            return cached
        try:
            answer = self._ask(self.request_body(text))
        except (_Transient, _BadAnswer) as exc:
            logger.warning("cloud backend openai: %s", exc)
            return exc
        if self.cache is not None:
            self.cache.put(key, answer)
        return answer

    def _ask(self, body: dict[str, Any]) -> Prediction:
        from tenacity import RetryCallState, Retrying, stop_after_attempt, stop_after_delay

        def retry(state: RetryCallState) -> bool:
            error = state.outcome.exception()
            if not isinstance(error, _Transient):
                return False
            wait = error.retry_after_s or 0.0
            return state.seconds_since_start + wait < self.config.deadline_s

        def wait(state: RetryCallState) -> float:
            error = state.outcome.exception()
            if error.retry_after_s is not None:
                return error.retry_after_s
            ceiling = self.backoff_s * 2 ** (state.attempt_number - 1)
            return ceiling * random.uniform(0.5, 1.0)

        retrying = Retrying(
            retry=retry,
            wait=wait,
            stop=stop_after_attempt(self.config.max_retries + 1) | stop_after_delay(self.config.deadline_s),
            reraise=True,
        )
        return retrying(self._call, body)

    def _call(self, body: dict[str, Any]) -> Prediction:
        import httpx

        started = time.monotonic()
        try:
            with self.client.stream("POST", self.endpoint, json=body) as response:
                declared = int(response.headers.get("Content-Length") or 0)
                content = (
                    read_within(response.iter_bytes(), started + self.config.timeout_s, declared)
                    if response.status_code == 200
                    else b""
                )
        except (httpx.TimeoutException, TooSlow):
            raise _Transient(f"{self.endpoint} did not answer within {self.config.timeout_s} s") from None
        except httpx.TransportError as exc:
            raise _Transient(f"{self.endpoint} unreachable: {type(exc).__name__}") from None
        if content is None:
            raise _BadAnswer(f"{self.endpoint} answered more than {MAX_ANSWER_BYTES} bytes")
        status = response.status_code
        # The status only: an error's body may echo the text it was sent.
        if status in (408, 429) or status >= 500:
            raise _Transient(
                f"{self.endpoint} answered {status}", _retry_after(response.headers.get("Retry-After"))
            )
        if status != 200:
            raise _BadAnswer(f"{self.endpoint} answered {status}")
        return self._parse(content, len(json.dumps(body["messages"]).encode()))

    def _parse(self, content: bytes, prompt_bytes: int) -> Prediction:
        try:
            data = json.loads(content)
            choice = data["choices"][0]
            message = choice["message"]
        except (ValueError, KeyError, IndexError, TypeError, RecursionError):
            raise _BadAnswer(f"{self.endpoint} answered a body that is not a chat completion") from None
        if message.get("refusal") or choice.get("finish_reason") == "content_filter":
            raise _BadAnswer(f"{self.endpoint} refused to answer")
        label = self._label(message.get("content"))
        return Prediction(
            label, _confidence(choice.get("logprobs")), self._cost(data.get("usage"), prompt_bytes)
        )

    def _label(self, content: Any) -> str:
        if not isinstance(content, str):
            raise _BadAnswer(f"{self.endpoint} answered no content")
        if self.config.constraint == "guided_choice":
            label = content.strip()
        else:
            try:
                label = json.loads(content)["label"]
            except (ValueError, KeyError, TypeError, RecursionError):
                raise _BadAnswer(f"{self.endpoint} answered content that is not the JSON asked for") from None
        if label not in self.labels:
            raise _BadAnswer(f"{self.endpoint} answered a label outside the bundle's")
        return label

    def _cost(self, usage: Any, prompt_bytes: int) -> float | None:
        """The call's price from the token counts it reports, or None (the router's cloud cost)
        where they are missing or cannot be: not whole numbers, negative, more answer tokens
        than were allowed, or more prompt tokens than the prompt has bytes and a chat template."""
        config = self.config
        if not config.priced or not isinstance(usage, dict):
            return None
        prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
        if not all(isinstance(n, int) and not isinstance(n, bool) for n in (prompt, completion)):
            return None
        if not (0 <= prompt <= prompt_bytes + TEMPLATE_TOKENS and 0 <= completion <= ANSWER_TOKENS):
            logger.warning(
                "cloud backend openai: %s reported a usage that cannot be (%d prompt and %d answer "
                "tokens); the call is priced at the router's cloud cost", self.endpoint, prompt, completion,
            )  # fmt: skip
            return None
        return (
            prompt * config.price_per_1k_input_tokens + completion * config.price_per_1k_output_tokens
        ) / 1000


class TooSlow(TimeoutError):
    """An answer that had not arrived whole by the call's deadline (a cloud that drips it)."""


def read_within(chunks: Iterable[bytes], deadline: float, declared: int = 0) -> bytes | None:
    """A body read from ``chunks`` until ``deadline`` (`time.monotonic`), `TooSlow` after it;
    None past ``MAX_ANSWER_BYTES`` (``declared`` by Content-Length, or read: no further than that)."""
    if declared > MAX_ANSWER_BYTES:
        return None
    parts, size = [], 0
    for chunk in chunks:
        if time.monotonic() > deadline:
            raise TooSlow(f"the answer was not whole within its deadline ({size} bytes read)")
        size += len(chunk)
        if size > MAX_ANSWER_BYTES:
            return None
        parts.append(chunk)
    return b"".join(parts)


def _confidence(logprobs: Any) -> float | None:
    """The probability of the answer's tokens, from ``choices[0].logprobs.content``, or None."""
    try:
        values = [float(token["logprob"]) for token in logprobs["content"]]
    except (KeyError, TypeError, ValueError):
        return None
    if not values or not all(math.isfinite(v) and v <= 0 for v in values):
        return None
    return math.exp(sum(values))
