"""Who may call what on the service: the classify key and the feedback keys, and how fast a
feedback source may post.

Feedback decides promotion (``promote --from-canary``), so it is a role of its own. The classify
key (``api_key_env``) calls ``/v1/classify`` and ``/v1/health`` and may not give feedback; each
feedback key (``feedback.keys_env``: a JSON object of source name to key) may only post
``/v1/feedback``, and names the source its feedback is recorded under. Without any key the API
is open, and a feedback source is the client's address.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from edgeroute.config import ConfigError, ServeConfig

FEEDBACK_PATH = "/v1/feedback"
SOURCE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
UNNAMED = "unnamed"  # the source of feedback recorded before sources were


class Denied(Exception):
    """A request the keys do not let through: 401 (no key or a wrong one) or 403 (the key of
    another role)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


def read_feedback_keys(value: str | None, variable: str) -> dict[str, str]:
    """The feedback keys of ``variable``'s ``value`` (a JSON object of source name to key);
    `ConfigError` naming the variable and what is wrong, never a key."""
    if not value:
        return {}
    try:
        keys = json.loads(value)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{variable}: not JSON ({exc.msg} at character {exc.pos})") from None
    if not isinstance(keys, dict) or not keys:
        raise ConfigError(f'{variable}: give a JSON object of source name to key, {{"helpdesk": "<key>"}}')
    for source, key in keys.items():
        if not SOURCE_NAME.fullmatch(source):
            raise ConfigError(
                f"{variable}: source {source!r}: 1 to 64 letters, digits, '.', '_' or '-', "
                "from a letter or digit"
            )
        if not isinstance(key, str) or len(key) < 8:
            raise ConfigError(
                f"{variable}: source {source!r}: the key must be a string of 8 characters or more"
            )
    if len(set(keys.values())) < len(keys):
        raise ConfigError(f"{variable}: two sources have the same key; give each its own")
    return keys


def _matches(given: bytes | None, key: str) -> bool:
    """Constant-time comparison of the header's bytes with the key (non-ASCII keys included)."""
    return bool(given) and secrets.compare_digest(given, key.encode("utf-8"))


@dataclass(frozen=True)
class Access:
    """The service's keys: ``api_key`` (classify and health; None: open) and ``feedback_keys``
    (source name to key). With no feedback key, feedback is refused when ``api_key`` is set, and
    open, named by the client's address, when no key is set at all."""

    api_key: str | None = None
    feedback_keys: Mapping[str, str] = field(default_factory=dict)
    variable: str = "EDGEROUTE_FEEDBACK_KEYS"  # where the feedback keys come from, for messages

    def __post_init__(self) -> None:
        if self.api_key is not None and self.api_key in self.feedback_keys.values():
            raise ConfigError(f"{self.variable}: a feedback key is the classify key: give feedback its own")

    @property
    def keyed(self) -> bool:
        return self.api_key is not None or bool(self.feedback_keys)

    def _source(self, given: bytes | None) -> str | None:
        named = [name for name, key in self.feedback_keys.items() if _matches(given, key)]
        return named[0] if named else None

    def admit(self, path: str, given: bytes | None, client: str) -> str | None:
        """The feedback source of a request to ``path`` with the ``X-API-Key`` header's bytes
        ``given`` (None for a path other than feedback); `Denied` when the keys refuse it."""
        source = self._source(given)
        is_classify = self.api_key is not None and _matches(given, self.api_key)
        if path == FEEDBACK_PATH:
            if source is not None:
                return source
            if is_classify:
                raise Denied(
                    403,
                    f"the classify key may not give feedback: feedback has keys of its own ({self.variable})",
                )
            if self.keyed:
                raise Denied(401, "missing or wrong feedback key (header X-API-Key)")
            return client
        if source is not None and self.api_key is not None:
            raise Denied(403, f"a feedback key may only post {FEEDBACK_PATH}")
        if self.api_key is not None and not is_classify:
            raise Denied(401, "missing or wrong API key (header X-API-Key)")
        return None


def access_of(config: ServeConfig) -> Access:
    """The keys of the variables ``config`` names (``api_key_env``, ``feedback.keys_env``);
    `ConfigError` naming what is wrong with them."""
    variable = config.feedback.keys_env
    api_key = os.environ.get(config.api_key_env) or None
    return Access(api_key, read_feedback_keys(os.environ.get(variable), variable), variable)


class RateLimit:
    """A token bucket a source: ``per_minute`` posts a minute, in bursts of as many."""

    MAX_SOURCES = 10_000  # buckets kept; full ones are forgotten past it

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute, self.clock = per_minute, clock
        self._buckets: dict[str, tuple[float, float]] = {}  # source: (tokens, when)
        self._lock = threading.Lock()

    def take(self, source: str) -> float:
        """Take one post for ``source``: 0 when it may, else the seconds until it may."""
        rate = self.per_minute / 60
        with self._lock:
            now = self.clock()
            tokens, when = self._buckets.get(source, (float(self.per_minute), now))
            tokens = min(float(self.per_minute), tokens + (now - when) * rate)
            if tokens < 1:
                self._buckets[source] = (tokens, now)
                return (1 - tokens) / rate
            self._buckets[source] = (tokens - 1, now)
            if len(self._buckets) > self.MAX_SOURCES:
                self._forget_full(now, rate)
            return 0.0

    def _forget_full(self, now: float, rate: float) -> None:
        buckets = self._buckets.items()
        full = [s for s, (tokens, when) in buckets if tokens + (now - when) * rate >= self.per_minute]
        for source in full:
            del self._buckets[source]
