"""Prefect flows: wiring only.

A run without a Prefect server starts a temporary one, which migrates a new database on first
use: on a loaded 2-core machine that takes longer than Prefect's default 20 s. Every way in
(``edgeroute train``, ``python -m flows``, a deployment's run) imports this package before
Prefect, so the longer limit is the default here, and a value set by the user is kept.
"""

import os

os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
