"""File-system helpers shared by everything that writes a directory others will read."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_directory(destination: Path) -> Iterator[Path]:
    """Yield a staging directory beside ``destination``, renamed into place if the block succeeds.

    Readers see the whole directory or none of it; a failure leaves no trace.
    """
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{destination.name}-", dir=destination.parent))
    try:
        yield staging
        os.replace(staging, destination)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
