"""File-system helpers shared by everything that writes a directory others will read."""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_directory(destination: Path) -> Iterator[Path]:
    """Yield a staging directory beside ``destination``, renamed into place if the block succeeds.

    Readers see the whole directory or none of it; a failure leaves no trace. When another
    writer put the same directory in place meanwhile (a second run on the same key), theirs
    stands and this one is discarded: a keyed directory holds the same content either way.
    """
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{destination.name}-", dir=destination.parent))
    try:
        yield staging
        try:
            os.replace(staging, destination)
        except OSError:
            if not destination.is_dir():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def staging_of(destination: Path) -> list[Path]:
    """The staging directories `atomic_directory` left beside ``destination`` (a killed writer's)."""
    return sorted(p for p in destination.parent.glob(f".{destination.name}-*") if p.is_dir())


@contextmanager
def exclusive(path: Path) -> Iterator[None]:
    """Hold an advisory lock on ``path`` (created if needed) for the block: one writer at a
    time, across threads and processes; the lock goes with the holder, even when it is killed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
