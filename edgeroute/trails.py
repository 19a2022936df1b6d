"""Which audit trail: one box's SQLite file (`edgeroute.audit`) or a fleet's Postgres
(`edgeroute.pgtrail`), by its location; what opens, reads for retraining and reads for health
goes through here."""

from __future__ import annotations

from pathlib import Path

from edgeroute import audit
from edgeroute.config import AuditConfig, is_postgres


def open_trail(config: AuditConfig, instance: str) -> audit.Trail:
    """The trail ``config`` names: SQLite at ``path``, or Postgres at ``url`` (rows naming
    ``config.instance``, else ``instance``), spooling while it is away."""
    if config.url is None:
        return audit.AuditLog(config.path, keep_text=config.keep_text)
    from edgeroute.pgtrail import PostgresTrail

    return PostgresTrail(config, config.instance or instance)


def training_rows(trail: Path | str, since: float | None = None) -> list[dict]:
    """What a trail kept with keep_text="masked" holds for retraining, oldest first: each
    decision from ``since`` on with its time, masked_text (None in rows written before the trail
    kept text), route, edge_label, cloud_label and the first feedback label (true_label). A
    trail that keeps no text is refused, saying so. ``trail``: a SQLite file, or a Postgres URL."""
    if is_postgres(trail):
        from edgeroute.pgtrail import postgres_training_rows

        return postgres_training_rows(str(trail), since)
    return audit.training_rows(Path(trail), since)


def window(trail: Path | str, since: float, limit: int) -> list[dict]:
    """The decisions of every service that writes ``trail`` from ``since`` on, the newest
    ``limit`` of them, oldest first, each with its ``instance`` (a SQLite trail's one service is
    named by its path) and its first feedback label (``true_label``)."""
    if is_postgres(trail):
        from edgeroute.pgtrail import postgres_window

        return postgres_window(str(trail), since, limit)
    return audit.window(Path(trail), since, limit)
