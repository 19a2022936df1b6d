"""Signed bundles: OpenSSF model signing (`model-signing`) with an elliptic-curve key, offline.

A bundle is signed when it is written, if ``EDGEROUTE_BUNDLE_SIGNING_KEY`` names a private key
(PEM, EC P-256/384/521): the signature, ``model.sig`` in the bundle, covers every file of it, the
manifest too, so a reordered label list or a changed file whose hash was updated in the manifest
no longer verifies. A bundle is verified at every load, if ``EDGEROUTE_BUNDLE_PUBLIC_KEY`` names
the public key; then an unsigned bundle is refused too. The keys stay where their variables
point: neither a key nor its path is written into the bundle.

Needs the ``signing`` extra (`model-signing`); nothing of it is imported unless a key is set.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

SIGNATURE = "model.sig"
SIGNING_KEY_ENV = "EDGEROUTE_BUNDLE_SIGNING_KEY"
PUBLIC_KEY_ENV = "EDGEROUTE_BUNDLE_PUBLIC_KEY"


class SigningError(ValueError):
    """A bundle that cannot be signed, or whose signature does not verify."""


def _configured(variable: str) -> Path | None:
    """The key file ``variable`` names, if set; refused when it is not a readable file."""
    value = os.environ.get(variable)
    if not value:
        return None
    path = Path(value)
    if not path.is_file():
        raise SigningError(f"{variable}={value}: no such key file")
    return path


def _model_signing():
    try:
        import model_signing
    except ImportError as exc:
        raise SigningError(
            f"signed bundles need the 'signing' extra: pip install 'edgeroute[signing]' ({exc})"
        ) from None
    return model_signing


def _hashing(model_signing):
    # The signature lies in the directory it signs: everything else is covered.
    return model_signing.hashing.Config().set_ignored_paths(paths=[SIGNATURE], ignore_git_paths=False)


def sign(directory: Path) -> bool:
    """Sign ``directory`` with the configured private key; False when none is configured."""
    key = _configured(SIGNING_KEY_ENV)
    if key is None:
        return False
    model_signing = _model_signing()
    try:
        config = model_signing.signing.Config().use_elliptic_key_signer(private_key=key)
        config.set_hashing_config(_hashing(model_signing)).sign(directory, directory / SIGNATURE)
    except (ValueError, TypeError) as exc:
        raise SigningError(f"{SIGNING_KEY_ENV}: cannot sign {directory} with {key.name}: {exc}") from None
    return True


def verify(directory: Path) -> bool:
    """Check ``directory``'s signature against the configured public key; False when none is.

    Refuses (`SigningError`) an unsigned directory, a changed, added or removed file, and a
    signature made with another key.
    """
    key = _configured(PUBLIC_KEY_ENV)
    if key is None:
        return False
    signature = directory / SIGNATURE
    if not signature.is_file():
        raise SigningError(f"{directory}: not signed (no {SIGNATURE}), and {PUBLIC_KEY_ENV} is set")
    model_signing = _model_signing()
    from cryptography.exceptions import InvalidSignature

    try:
        model_signing.verifying.Config().use_elliptic_key_verifier(public_key=key).set_hashing_config(
            _hashing(model_signing)
        ).verify(directory, signature)
    except InvalidSignature:
        raise SigningError(f"{directory}: the signature does not verify with {PUBLIC_KEY_ENV}") from None
    except ValueError as exc:
        raise SigningError(f"{directory}: signature check failed: {_readable(str(exc))}") from None
    return True


def _readable(message: str) -> str:
    """model-signing's mismatch (a list's repr, with digests as bytes) as the files it names."""
    changed = sorted(set(re.findall(r"Hash mismatch for \\?'([^'\\]+)", message)))
    if changed:
        return f"{', '.join(changed)} changed since the bundle was signed"
    return message
