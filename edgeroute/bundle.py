"""The model bundle: the one directory that is gated, registered, served and rolled back.

``manifest.json`` lists every file with its sha256; loading checks each one and refuses a
bundle that does not match, so what is served is exactly what was gated. With signing keys
configured (`edgeroute.signing`), a bundle is signed when it is written, manifest included, and
its signature is checked at every load.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from edgeroute import privacy
from edgeroute.cloud import CircuitBreaker, CloudBackend, GuardedCloud, LocalCloud, OpenAICloud, remote_cloud
from edgeroute.config import CloudConfig, ServeConfig
from edgeroute.drift import Profile
from edgeroute.files import atomic_directory
from edgeroute.model import OnnxClassifier, load_tokenizer
from edgeroute.router import Router, RouterSettings
from edgeroute.signing import SigningError, sign, verify

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
EDGE_MODEL = "edge/model.onnx"
CLOUD_MODEL = "cloud/model.onnx"
TOKENIZER = "tokenizer.json"
ROUTER = "router.json"
PROFILE = "profile.json"  # the reference profile of the training inputs (`edgeroute.drift`)
MAX_LENGTH = 512  # the longest token sequence a bundle may ask for (BERT-style position tables)


class BundleError(ValueError):
    """A bundle that is missing, malformed or altered since it was written."""


@contextmanager
def _signature_checked() -> Iterator[None]:
    try:
        yield
    except SigningError as exc:
        raise BundleError(str(exc)) from None


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_bundle(
    destination: Path,
    files: Mapping[str, Path],
    *,
    labels: list[str],
    max_length: int,
    metrics: Mapping[str, Any],
    lineage: Mapping[str, Any],
) -> Path:
    """Copy ``files`` (bundle path -> source) into a new bundle with its manifest, atomically.

    An existing bundle is never overwritten: bundles are immutable once written. It is signed
    when a signing key is configured.
    """
    for required in (EDGE_MODEL, TOKENIZER):
        if required not in files:
            raise BundleError(f"a bundle needs {required}")
    for name in files:
        _refuse_escape(destination, name, Path(name))
    if destination.exists():
        raise BundleError(f"{destination} already exists; bundles are never overwritten")
    with atomic_directory(destination) as staging:
        hashes = {}
        for name, source in sorted(files.items()):
            target = staging / name
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                shutil.copyfile(source, target)
            except OSError as exc:
                raise BundleError(f"{destination}: cannot copy {name} from {source}: {exc}") from None
            hashes[name] = sha256(target)
        manifest = {
            "format_version": FORMAT_VERSION,
            "labels": labels,
            "max_length": max_length,
            "files": hashes,
            "metrics": dict(metrics),
            "lineage": dict(lineage),
        }
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        with _signature_checked():
            sign(staging)
    return destination


def derive_bundle(
    source: Bundle,
    destination: Path,
    *,
    replace: Mapping[str, Path],
    metrics: Mapping[str, Any],
    lineage: Mapping[str, Any],
) -> Path:
    """A new bundle from ``source`` with some files replaced and its metrics and lineage updated."""
    manifest = source.manifest
    source.verify(*(name for name in manifest["files"] if name not in replace))
    return write_bundle(
        destination,
        {name: source.path / name for name in manifest["files"]} | dict(replace),
        labels=source.labels,
        max_length=manifest["max_length"],
        metrics=manifest["metrics"] | dict(metrics),
        lineage=manifest["lineage"] | dict(lineage),
    )


@dataclass(frozen=True)
class Bundle:
    """A bundle on disk whose files are checked against the manifest before they are read."""

    path: Path
    manifest: dict[str, Any]
    verified: set[str] = field(default_factory=set, compare=False, repr=False)

    def verify(self, *names: str) -> None:
        """Check each file's sha256 against the manifest (once per file); refuse a mismatch."""
        for name in names:
            if name not in self.verified:
                self.read(name)

    def read(self, name: str) -> bytes:
        """The bytes of ``name``, read once and checked against its sha256 in the manifest: what
        is loaded is what was checked, even if the file is replaced after the check."""
        if name not in self.manifest["files"]:
            raise BundleError(f"{self.path}: no {name} in this bundle")
        content = (self.path / name).read_bytes()
        if hashlib.sha256(content).hexdigest() != self.manifest["files"][name]:
            raise BundleError(f"{self.path}: {name} does not match its sha256 in the manifest; refusing it")
        self.verified.add(name)
        return content

    @property
    def labels(self) -> list[str]:
        return list(self.manifest["labels"])

    def has(self, name: str) -> bool:
        return name in self.manifest["files"]

    def classifier(self, name: str = EDGE_MODEL, *, threads: int = 1, batch_size: int = 32) -> OnnxClassifier:
        """The ONNX classifier ``name`` (edge or cloud) with the bundle's tokenizer and labels."""
        if not self.has(name):
            raise BundleError(f"{self.path}: no {name} in this bundle")
        # A model may carry its own tokenizer (the FP32 cloud model beside a trimmed edge one).
        own = str(Path(name).parent / TOKENIZER)
        tokenizer_name = own if self.has(own) else TOKENIZER
        tokenizer = load_tokenizer(self.read(tokenizer_name), self.manifest["max_length"])
        model = OnnxClassifier(
            self.read(name), tokenizer, self.labels, threads=threads, batch_size=batch_size
        )
        outputs = model.session.get_outputs()[0].shape[-1]
        if isinstance(outputs, int) and outputs != len(self.labels):
            raise BundleError(
                f"{self.path}: {name} has {outputs} outputs and the manifest {len(self.labels)} labels"
            )
        return model

    def router_settings(self) -> RouterSettings:
        """``router.json``, or the reference settings for a bundle that was never calibrated."""
        if not self.has(ROUTER):
            return RouterSettings()
        try:
            return RouterSettings.parse(self.read(ROUTER), self.path / ROUTER)
        except ValueError as exc:
            raise BundleError(str(exc)) from None

    def profile(self) -> Profile | None:
        """``profile.json``, or None for a bundle written without one (drift is then not measured)."""
        if not self.has(PROFILE):
            return None
        try:
            return Profile.from_dict(json.loads(self.read(PROFILE)))
        except ValueError as exc:  # JSONDecodeError included
            raise BundleError(f"{self.path}: {PROFILE}: {exc}") from None

    def router(self, cloud: CloudBackend | None = None, *, threads: int = 1, batch_size: int = 32) -> Router:
        """The edge model routed with this bundle's settings; the cloud defaults to its FP32 model."""
        if cloud is None and self.has(CLOUD_MODEL):
            cloud = LocalCloud(self.classifier(CLOUD_MODEL, threads=threads, batch_size=batch_size))
        edge = self.classifier(EDGE_MODEL, threads=threads, batch_size=batch_size)
        return Router(edge, cloud, self.router_settings())

    def remote_cloud(self, config: CloudConfig) -> CloudBackend:
        """``config``'s remote backend for this bundle's labels; an LLM is shown the few-shot
        examples the router was calibrated with, takes its fitted temperature and is probed
        (`CloudRefused` when it obeys no constraint form)."""
        calibrated = self.router_settings().calibration.get("cloud", {})  # an LLM's, when it was one
        cloud = remote_cloud(config, self.labels, [tuple(e) for e in calibrated.get("examples", [])])
        if isinstance(cloud, OpenAICloud):
            cloud.start(calibrated)
        return cloud


def _refuse_escape(root: Path, name: str, inside: Path) -> None:
    """Refuse a manifest entry that is absolute, climbs with ``..`` or resolves outside ``root``."""
    parts = Path(name).parts
    escapes = not parts or Path(name).is_absolute() or ".." in parts
    if escapes or not (root / inside).resolve().is_relative_to(root.resolve()):
        raise BundleError(f"{root}: manifest entry {name!r} points outside the bundle; refusing it")


def check_manifest(manifest: Any, source: Path) -> None:
    """Refuse a manifest whose values would break a request instead of the load, naming the field."""
    version = manifest.get("format_version") if isinstance(manifest, dict) else None
    if type(version) is not int or version != FORMAT_VERSION:  # ``true == 1`` in Python
        raise BundleError(f"{source}: format_version {version!r}, this edgeroute reads {FORMAT_VERSION}")
    missing = [key for key in ("labels", "max_length", "files") if key not in manifest]
    if missing:
        raise BundleError(f"{source}: no {', '.join(missing)} in the manifest")
    labels = manifest["labels"]
    if not isinstance(labels, list) or len(labels) < 2 or not all(isinstance(x, str) and x for x in labels):
        raise BundleError(f"{source}: labels must be a list of at least two non-empty strings")
    if len(set(labels)) != len(labels):
        raise BundleError(f"{source}: labels must not repeat")
    length = manifest["max_length"]
    if type(length) is not int or not 1 <= length <= MAX_LENGTH:
        raise BundleError(f"{source}: max_length must be an integer from 1 to {MAX_LENGTH}, not {length!r}")
    if not isinstance(manifest["files"], dict) or not all(
        isinstance(h, str) for h in manifest["files"].values()
    ):
        raise BundleError(f"{source}: files must map each file to its sha256")


def load_bundle(path: Path, *, lazy: bool = False) -> Bundle:
    """Read a bundle: its format, that every listed file is there, and every file's sha256.

    ``lazy`` defers each file's checksum to its first read (``Bundle.verify``): a service that
    loads only the edge model does not hash the FP32 one, and still serves nothing unverified.
    With a public key configured the signature is checked first, over every file.
    """
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise BundleError(f"{path}: not a bundle (no {MANIFEST})")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise BundleError(f"{manifest_path}: not valid JSON ({exc.msg})") from None
    check_manifest(manifest, manifest_path)
    for name in manifest["files"]:
        _refuse_escape(path, name, Path(name))
        if not (path / name).is_file():
            raise BundleError(f"{path}: {name} is listed in the manifest but missing")
    with _signature_checked():
        verify(path)
    bundle = Bundle(path, manifest)
    if not lazy:
        bundle.verify(*manifest["files"])
    bundle.router_settings()  # an invalid router.json is refused on load, not at the first query
    bundle.profile()
    return bundle


def edge_cloud_router(bundle: Bundle, config: ServeConfig, breaker: CircuitBreaker) -> Router:
    """The bundle's router for ``config.role``: escalations to ``config.cloud``'s backend (the
    bundle's FP32 model in-process by default); an edge service with a remote cloud never loads
    that model. An edge masks with ``config.privacy`` from then on (`PrivacyError` when its
    engine cannot run)."""
    threads = config.batching.threads
    if config.role == "cloud":
        return bundle.router(LocalCloud(bundle.classifier(CLOUD_MODEL, threads=threads)), threads=threads)
    privacy.configure(config.privacy)
    if config.cloud.backend != "local":
        cloud = bundle.remote_cloud(config.cloud)
    elif bundle.has(CLOUD_MODEL):
        cloud = LocalCloud(bundle.classifier(CLOUD_MODEL, threads=threads))
    else:
        cloud = None
    router = bundle.router(GuardedCloud(cloud, breaker) if cloud else None, threads=threads)
    if config.min_confidence is not None:
        router.settings = replace(router.settings, min_confidence=config.min_confidence)
    return router
