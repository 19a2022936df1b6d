"""What a service answers with: the champion and, optionally, a canary; each swapped atomically.

A `Release` is one loaded bundle: its version, its router for the service's role, and its
reference profile. `Releases` holds the champion and the canary; a request takes both once, at
its start, so that it finishes on the models it began with whatever is swapped meanwhile. The
canary answers a fixed share of requests, chosen by a hash of the request id: the same request
always goes the same way, and about ``share`` of them go to the canary.

A `Follower` keeps one of them on the version a registry alias points at: every ``refresh_s``
it asks which version the alias holds, and a new one is downloaded, verified (every file's
sha256, and the signature where keys are configured), loaded and warmed up beside the one
serving, then swapped in. A version that fails any of that is logged and skipped while the
alias stays on it; the old one keeps serving. Once the alias moves, to another version or away
and back, the refused one is tried again: its artifacts may have been fixed since.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from edgeroute.bundle import Bundle, edge_cloud_router, load_bundle
from edgeroute.cloud import CircuitBreaker
from edgeroute.config import ServeConfig
from edgeroute.drift import Profile
from edgeroute.router import Decision, Router

logger = logging.getLogger("edgeroute.releases")
Slot = Literal["champion", "canary"]
WARM_UP = ("Hello, where is my order?", "I was charged twice and nobody answers my emails.")


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


@dataclass(frozen=True, eq=False)
class Release:
    """One loaded bundle: the version it is, what answers for the role, its reference profile."""

    version: str
    router: Router
    tier: Router | CloudTier
    profile: Profile | None
    # False for a dynamic-INT8 edge model (and a bundle that does not say): its answers depend on
    # the texts sharing a model call, so requests are not micro-batched together.
    batch_independent: bool = False

    def route(self, texts: Sequence[str]) -> list[Decision]:
        return self.tier.route(texts)

    @property
    def escalating(self) -> Router | None:
        """The router whose escalations wait for a remote cloud tier, on threads of their own;
        None in the cloud role, and where the cloud tier is the bundle's model in this process."""
        return self.tier if isinstance(self.tier, Router) and self.tier.cloud_is_remote else None

    def decide_on_edge(self, texts: Sequence[str]) -> list[Decision]:
        """What is decided in the edge's own call: the edge's decisions where a remote cloud tier
        is to answer some of them (`Router.decide_on_edge`), else every answer. An in-process
        cloud model answers a micro-batch's escalated texts in one call, as the edge model does:
        it computes on the same cores and cannot hang on a network."""
        router = self.escalating
        return router.decide_on_edge(texts) if router is not None else self.tier.route(texts)


def model_version(bundle: Bundle, registered: str | None = None) -> str:
    """What the service reports as its model: the registry version, else the training run."""
    return registered or str(bundle.manifest["lineage"].get("mlflow_run_id") or bundle.path.name)


def open_release(
    path: Path, registered: str | None, config: ServeConfig, breaker: CircuitBreaker, *, lazy: bool
) -> Release:
    """The bundle at ``path`` loaded for ``config.role`` and warmed up (the edge model's first
    call, and the in-process cloud model's); `BundleError` or `PrivacyError` when it cannot be.

    ``lazy`` defers each file's checksum to its first read (`edgeroute.bundle.load_bundle`)."""
    bundle = load_bundle(path, lazy=lazy)
    router = edge_cloud_router(bundle, config, breaker)
    tier = router if config.role == "edge" else CloudTier(router)
    router.features(WARM_UP)
    if config.role == "cloud":
        tier.route(WARM_UP)
    independent = bool(bundle.manifest["lineage"].get("batch_independent", False))
    return Release(model_version(bundle, registered), router, tier, bundle.profile(), independent)


def canary_bucket(request_id: str) -> float:
    """Where a request id falls in [0, 1): below the canary's share, the canary answers it."""
    return int(hashlib.sha256(request_id.encode()).hexdigest()[:13], 16) / 16**13


class Releases:
    """The champion and the canary (None, or answering ``canary_share`` of the requests)."""

    def __init__(self, champion: Release, canary: Release | None = None, canary_share: float = 0.0) -> None:
        if not 0 <= canary_share <= 1:
            raise ValueError(f"canary_share must be within [0, 1], not {canary_share}")
        self.champion, self.canary, self.canary_share = champion, canary, canary_share
        self.listeners: list[Callable[[Slot, Release, Release | None], None]] = []

    def pick(self, request_ids: Sequence[str]) -> list[Release]:
        """The release that answers each request, from one look at both slots."""
        champion, canary, share = self.champion, self.canary, self.canary_share
        if canary is None:
            return [champion] * len(request_ids)
        return [canary if canary_bucket(i) < share else champion for i in request_ids]

    def install(self, slot: Slot, release: Release) -> None:
        """Swap ``release`` into ``slot``: one assignment, so a request sees the old or the new one."""
        old = getattr(self, slot)
        setattr(self, slot, release)
        for listener in self.listeners:
            listener(slot, release, old)


class Downloads:
    """The bundle folders a plugin downloaded for the releases served: each removed (``forget``)
    once its release is served no more, swapped out or refused, and every one at exit. A bundle
    given as a folder is never one of them."""

    def __init__(self, releases: Releases, forget: Callable[[Path], None]) -> None:
        self.releases, self.forget = releases, forget
        self.owned: dict[Release, Path] = {}
        releases.listeners.append(self._installed)

    def own(self, release: Release, path: Path) -> None:
        self.owned[release] = path

    def build(self, build: Callable[[Path, str], Release]) -> Callable[[Path, str], Release]:
        """``build`` that owns the folder of what it loads, and forgets a folder it refuses."""

        def owning(path: Path, version: str) -> Release:
            try:
                release = build(path, version)
            except Exception:
                self.forget(path)
                raise
            self.own(release, path)
            return release

        return owning

    def _installed(self, slot: Slot, release: Release, old: Release | None) -> None:
        serving = (self.releases.champion, self.releases.canary)
        if old is not None and old not in serving and old in self.owned:
            self.forget(self.owned.pop(old))

    def close(self) -> None:
        for path in self.owned.values():
            self.forget(path)
        self.owned.clear()


class Follower:
    """Keeps ``slot`` of ``releases`` on the version the registry alias of ``uri`` points at.

    ``lookup(uri)`` names the version the alias holds now (``<name>/<version>``); ``fetch(uri)``
    downloads a pinned ``models:/<name>/<version>`` and returns its bundle directory; ``build``
    loads it as a warmed-up `Release` (`open_release`)."""

    def __init__(
        self,
        uri: str,
        slot: Slot,
        releases: Releases,
        *,
        refresh_s: float,
        lookup: Callable[[str], str],
        fetch: Callable[[str], Path],
        build: Callable[[Path, str], Release],
    ) -> None:
        self.uri, self.slot, self.releases, self.refresh_s = uri, slot, releases, refresh_s
        self.lookup, self.fetch, self.build = lookup, fetch, build
        self.refused: str | None = None  # the version the alias holds that failed; None once it moves

    @property
    def serving(self) -> str:
        return getattr(self.releases, self.slot).version

    def check(self) -> str | None:
        """One look at the alias: the version swapped in, or None (unchanged, skipped, or failed)."""
        try:
            version = self.lookup(self.uri)
        except Exception as exc:  # the registry is down: keep serving what is loaded
            logger.warning("%s: cannot read the registry (%s); still serving %s", self.uri, exc, self.serving)
            return None
        if version != self.refused:
            self.refused = None
        if version == self.serving or version == self.refused:
            return None
        began = time.perf_counter()
        try:
            release = self.build(self.fetch(f"models:/{version}"), version)
        except Exception as exc:  # a version that cannot be served is never half-swapped in
            self.refused = version
            logger.error(
                "%s: version %s refused (%s); still serving %s", self.uri, version, exc, self.serving
            )
            return None
        old = self.serving
        self.releases.install(self.slot, release)
        logger.warning(
            "%s: %s %s -> %s, loaded and warmed up in %.1f s",
            self.uri, self.slot, old, version, time.perf_counter() - began,
        )  # fmt: skip
        return version

    async def run(self) -> None:
        """Check every ``refresh_s`` until cancelled; loading happens on a thread, never on the loop."""
        while True:
            await asyncio.sleep(self.refresh_s)
            await asyncio.to_thread(self.check)
