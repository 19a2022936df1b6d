"""The audit trail of a fleet: one Postgres database that many edge services write.

The tables are the SQLite trail's (`edgeroute.audit`), with ``instance`` on every row: the
service that wrote it. Append-only there too: statement triggers refuse UPDATE, DELETE and
TRUNCATE, and the role a service connects as should hold only SELECT and INSERT (the operating
guide shows the grants). `PostgresTrail.purge`, run by the tables' owner, is the one path that
deletes.

While the database cannot be reached, `PostgresTrail.record` appends the rows (text hashed and
masked, never raw) to a local `edgeroute.spool.Spool`, and a thread writes them back in order
once it can. Request ids are the key and a row already there is skipped, so a flush cut short
and done again duplicates nothing. Every service of a fleet hashes texts with one key,
``EDGEROUTE_AUDIT_KEY``, so that one message matches across them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from edgeroute.audit import (
    _COLUMNS,
    _DECISIONS,
    _MONITORED,
    FEEDBACK_SOURCE,
    KEY_ENV,
    NO_TEXT_KEPT,
    RECENT,
    TRAINING,
    TRAINING_COLUMNS,
    WAIT_S,
    AuditError,
    AuditUnavailable,
    FeedbackConflict,
    Trail,
    feedback_source,
)
from edgeroute.audit import _reading as _sqlite
from edgeroute.config import AuditConfig, redact_password
from edgeroute.spool import Spool, SpoolFull

logger = logging.getLogger("edgeroute.audit")
CONNECT_TIMEOUT_S = 2
FLUSH_EVERY_S = 0.5
FLUSH_ROWS = 500  # rows a flush writes in one transaction
# How long a request's rows wait for a connection before they are spooled: the first requests
# of an outage wait this long (measured: 1 s with the pool's default wait, on every request of
# the outage's first second). Spooled rows lose nothing: they are written once the trail is back.
SPOOL_AFTER_S = 0.2
UNREACHABLE = (psycopg.OperationalError, psycopg.InterfaceError, PoolTimeout)


def _postgres(sqlite_type: str) -> str:
    # SQLite's REAL is 8 bytes; Postgres's REAL is 4, which would round a time to minutes.
    return sqlite_type.replace("REAL", "DOUBLE PRECISION")


_FEEDBACK = """
CREATE TABLE IF NOT EXISTS feedback (
    id BIGSERIAL PRIMARY KEY,
    request_id TEXT NOT NULL REFERENCES decisions(request_id),
    time DOUBLE PRECISION NOT NULL,
    true_label TEXT NOT NULL,
    instance TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS feedback_request_id ON feedback (request_id);
CREATE INDEX IF NOT EXISTS decisions_time ON decisions (time);
CREATE OR REPLACE FUNCTION edgeroute_append_only() RETURNS trigger LANGUAGE plpgsql AS
$$ BEGIN RAISE EXCEPTION 'the audit trail is append-only'; END $$;
"""
_APPEND_ONLY = """
CREATE OR REPLACE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON {table}
FOR EACH STATEMENT EXECUTE FUNCTION edgeroute_append_only();
"""
_SCHEMA_LOCK = 7_311_002  # an advisory lock: two services creating the tables at once wait in turn


def schema(keep_text: str) -> list[str]:
    """The statements that make (or bring up to date) a trail kept with ``keep_text``."""
    columns = {**_MONITORED, "instance": "TEXT NOT NULL DEFAULT ''"}
    columns |= TRAINING_COLUMNS if keep_text == "masked" else {}
    return [
        _postgres(_DECISIONS.format(name="decisions")),
        *(f"ALTER TABLE decisions ADD COLUMN IF NOT EXISTS {c} {_postgres(t)}" for c, t in columns.items()),
        _FEEDBACK,
        f"ALTER TABLE feedback ADD COLUMN IF NOT EXISTS {FEEDBACK_SOURCE} TEXT",
        *(_APPEND_ONLY.format(table=table) for table in ("decisions", "feedback")),
    ]


def create(connection: psycopg.Connection, keep_text: str) -> None:
    """Make or bring up to date the tables, inside the caller's transaction; two services doing
    so at once wait in turn. Tables already as they must be are left alone, so a service whose
    role may only read and insert opens a trail its owner made."""
    columns = _columns(connection, "decisions")
    triggers = connection.execute(
        "SELECT count(*) FROM pg_trigger WHERE tgname IN ('decisions_append_only', 'feedback_append_only')"
    ).fetchone()[0]
    wanted = {*_COLUMNS, "instance", *(TRAINING_COLUMNS if keep_text == "masked" else ())}
    if wanted <= columns and FEEDBACK_SOURCE in _columns(connection, "feedback") and triggers == 2:
        return
    connection.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
    for statement in schema(keep_text):
        connection.execute(statement)


def _columns(connection: psycopg.Connection, table: str) -> set[str]:
    query = "SELECT column_name FROM information_schema.columns WHERE table_name = %s"
    return {row[0] for row in connection.execute(query, (table,))}


def fleet_key(location: str) -> bytes:
    """The fleet's HMAC key, ``EDGEROUTE_AUDIT_KEY``: required, since every service must hash alike."""
    key = os.environ.get(KEY_ENV, "")
    if not key:
        raise AuditError(
            f"{location}: a Postgres trail is shared by a fleet whose services must hash texts with "
            f"one key: set {KEY_ENV} (the same on every service)"
        )
    return key.encode()


class PostgresTrail(Trail):
    """Append-only Postgres record of decisions and feedback for a fleet; thread-safe."""

    def __init__(self, config: AuditConfig, instance: str) -> None:
        self.location = config.location
        super().__init__(fleet_key(self.location), config.keep_text)
        self.instance = instance
        self.insert = (
            f"INSERT INTO decisions ({', '.join((*self.columns, 'instance'))}) "
            f"VALUES ({', '.join(['%s'] * (len(self.columns) + 1))}) ON CONFLICT (request_id) DO NOTHING"
        )
        self.spool = Spool(config.spool, int(config.spool_max_mb * 2**20), config.on_full)
        self._pool = ConnectionPool(
            str(config.url), min_size=1, max_size=config.pool_size, timeout=WAIT_S, open=False,
            kwargs={"autocommit": True, "connect_timeout": CONNECT_TIMEOUT_S},
            check=ConnectionPool.check_connection, name="edgeroute-audit",
        )  # fmt: skip
        self._pool.open(wait=False)
        self._ready = False  # the tables made or checked
        try:
            self._ensure_schema()
        except AuditUnavailable as exc:
            if not config.start_offline:
                self._pool.close()
                self.spool.close()
                raise AuditError(
                    f"{exc}; start the database, or set audit.start_offline=true to spool rows "
                    f"({config.spool}) until it is back"
                ) from None
            logger.warning("%s; rows are spooled to %s until it is back", exc, config.spool)
        except AuditError:
            self._pool.close()
            self.spool.close()
            raise
        self._stop = threading.Event()
        self._flusher = threading.Thread(target=self._flush_while_open, name="edgeroute-spool", daemon=True)
        self._flusher.start()

    @contextlib.contextmanager
    def _connection(self, wait_s: float = WAIT_S) -> Iterator[psycopg.Connection]:
        """A pooled connection within ``wait_s``; `AuditUnavailable` while the database cannot
        be reached."""
        try:
            with self._pool.connection(timeout=wait_s) as connection:
                yield connection
        except UNREACHABLE as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise AuditUnavailable(f"{self.location}: {redact_password(reason)}") from None

    def _ensure_schema(self) -> None:
        if self._ready:
            return
        try:
            with self._connection() as connection, connection.transaction():
                create(connection, self.keep_text)
        except psycopg.errors.InsufficientPrivilege as exc:
            reason = str(exc).strip().splitlines()[0]
            raise AuditError(
                f"{self.location}: the tables need a change (a column this release adds) that only the "
                f"tables' owner may make: open it once as the owner, then start this service again ({reason})"
            ) from None
        self._ready = True

    def _write(self, values: list[tuple], wait_s: float = WAIT_S) -> None:
        self._ensure_schema()
        with self._connection(wait_s) as connection, connection.transaction():
            connection.cursor().executemany(self.insert, values)

    def record(self, rows: Iterable[dict]) -> None:
        """Decisions (as `Trail.values` reads them), written, or spooled while the database is
        away or earlier rows still wait; `AuditUnavailable` when the spool is full and refuses."""
        values = [(*row, self.instance) for row in self.values(rows)]
        if not self.spool.rows:
            try:
                self._write(values, SPOOL_AFTER_S)
                self.failure = None
                return
            except AuditUnavailable as exc:
                logger.warning("%s; spooling to %s", exc, self.spool.path)
        try:
            self.spool.append(values)
        except SpoolFull as exc:
            self.failure = str(exc)
            raise AuditUnavailable(self.failure) from None
        self.failure = None

    def flush(self) -> int:
        """Write the spooled rows, oldest first, while the database takes them; how many went."""
        written = 0
        while self.spool.rows:
            end, rows = self.spool.head(FLUSH_ROWS)
            self._write(rows)
            self.spool.advance(end, rows)
            written += len(rows)
        return written

    def _flush_while_open(self) -> None:
        while not self._stop.wait(FLUSH_EVERY_S):
            if self.spool.rows:
                with contextlib.suppress(AuditUnavailable):
                    if written := self.flush():
                        logger.info("%s: %d spooled rows written", self.location, written)

    def state(self) -> dict:
        """How the trail is kept now: written, spooling (rows waiting) or full (refusing)."""
        spool = self.spool
        kept = "full" if self.failure else "spooling" if spool.rows else "written"
        return {
            "state": kept, "spooled_rows": spool.rows, "spooled_bytes": spool.bytes,
            "dropped_rows": spool.dropped,
        }  # fmt: skip

    def feedback(self, request_id: str, true_label: str, source: str | None = None) -> bool:
        """Record the true label of a request, once, with its source (see
        `edgeroute.audit.AuditLog.feedback`)."""
        self._waiting(request_id)
        with self._connection() as connection, connection.transaction():
            # One writer per request across the fleet, between the check and the insert.
            connection.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (request_id,))
            row = connection.execute(
                "SELECT true_label FROM feedback WHERE request_id = %s ORDER BY id LIMIT 1", (request_id,)
            ).fetchone()
            if row is None:
                connection.execute(
                    "INSERT INTO feedback (request_id, time, true_label, instance, source) "
                    "VALUES (%s, %s, %s, %s, %s)",
                    (request_id, time.time(), true_label, self.instance, source),
                )
        if row is not None and row[0] != true_label:
            raise FeedbackConflict(request_id, row[0])
        return row is None

    def _waiting(self, request_id: str) -> None:
        if self.spool.holds(request_id):
            raise AuditUnavailable(
                f"{self.location}: request {request_id} waits in the spool until the trail is back"
            )

    def decision(self, request_id: str) -> dict | None:
        self._waiting(request_id)
        with self._connection() as connection:
            cursor = connection.execute("SELECT * FROM decisions WHERE request_id = %s", (request_id,))
            row = cursor.fetchone()
            names = [c.name for c in cursor.description or ()]
        return dict(zip(names, row, strict=True)) if row else None

    def recent(self, since: float, limit: int) -> list[dict]:
        """This instance's decisions from ``since`` on, as `edgeroute.audit.AuditLog.recent`;
        none while the database is away."""
        try:
            with self._connection() as connection:
                query = RECENT.format(
                    p="%s", where=" AND d.instance = %s", extra="", source=feedback_source([FEEDBACK_SOURCE])
                )
                cursor = connection.execute(query, (since, self.instance, limit))
                names = [c.name for c in cursor.description or ()]
                rows = cursor.fetchall()
        except AuditUnavailable as exc:
            logger.warning("%s: the monitor's window starts empty", exc)
            return []
        return [dict(zip(names, row, strict=True)) for row in reversed(rows)]

    def purge(self, before: float) -> int:
        """Remove the decisions older than ``before`` and their feedback, in one transaction
        that lifts the triggers and puts them back (the tables' owner only)."""
        with self._connection() as connection, connection.transaction():
            for table in ("decisions", "feedback"):
                connection.execute(f"ALTER TABLE {table} DISABLE TRIGGER {table}_append_only")
            old = "SELECT request_id FROM decisions WHERE time < %s"
            connection.execute(f"DELETE FROM feedback WHERE request_id IN ({old})", (before,))
            removed = connection.execute("DELETE FROM decisions WHERE time < %s", (before,)).rowcount
            for table in ("decisions", "feedback"):
                connection.execute(f"ALTER TABLE {table} ENABLE TRIGGER {table}_append_only")
        return removed

    def close(self) -> None:
        self._stop.set()
        self._flusher.join()
        with contextlib.suppress(AuditUnavailable):
            self.flush()
        self._pool.close()
        self.spool.close()


@contextlib.contextmanager
def _reading(url: str) -> Iterator[psycopg.Connection]:
    """A read-only connection to the trail at ``url``; `AuditError` naming it when it cannot be."""
    where = redact_password(url)
    try:
        with psycopg.connect(url, connect_timeout=CONNECT_TIMEOUT_S, autocommit=True) as connection:
            connection.read_only = True
            yield connection
    except psycopg.errors.UndefinedTable:
        raise AuditError(f"{where}: not an audit trail (no decisions table)") from None
    except psycopg.Error as exc:
        raise AuditError(f"{where}: not readable as an audit trail ({str(exc).strip()})") from None


def postgres_training_rows(url: str, since: float | None = None) -> list[dict]:
    """`edgeroute.trails.training_rows` of a Postgres trail."""
    with _reading(url) as connection:
        if not set(TRAINING_COLUMNS) <= _columns(connection, "decisions"):
            raise AuditError(f"{redact_password(url)}: {NO_TEXT_KEPT}")
        cursor = connection.execute(TRAINING.format(p="%s"), (since if since is not None else float("-inf"),))
        names = [c.name for c in cursor.description or ()]
        return [dict(zip(names, row, strict=True)) for row in cursor]


def postgres_window(url: str, since: float, limit: int) -> list[dict]:
    """Every instance's decisions from ``since`` on (the newest ``limit``, oldest first), each
    with its ``instance`` and first feedback label."""
    with _reading(url) as connection:
        source = feedback_source(_columns(connection, "feedback"))
        query = RECENT.format(p="%s", where="", extra=", d.instance", source=source)
        cursor = connection.execute(query, (since, limit))
        names = [c.name for c in cursor.description or ()]
        rows = cursor.fetchall()
    return [dict(zip(names, row, strict=True)) for row in reversed(rows)]


def migrate(database: Path, url: str, instance: str) -> dict[str, int]:
    """Copy every decision and feedback of the SQLite trail ``database`` into the Postgres trail
    at ``url``, in one transaction, the decisions named ``instance``: how many of each were
    copied and how many were there already (so running it twice copies nothing twice). Hashes are
    copied as they are: they match new rows only if ``EDGEROUTE_AUDIT_KEY`` is the SQLite
    trail's key."""
    with _sqlite(database) as db:
        present = [row[1] for row in db.execute("PRAGMA table_info(decisions)")]
        masked = set(TRAINING_COLUMNS) <= set(present)
        names = [c for c in (*_COLUMNS, *(TRAINING_COLUMNS if masked else ())) if c in present]
        decisions = db.execute(f"SELECT {', '.join(names)} FROM decisions ORDER BY time").fetchall()
        given = {row[1] for row in db.execute("PRAGMA table_info(feedback)")}
        source = FEEDBACK_SOURCE if FEEDBACK_SOURCE in given else "NULL"  # NULL: a trail from before sources
        feedback = db.execute(f"SELECT request_id, time, true_label, {source} FROM feedback ORDER BY id")
        feedback = feedback.fetchall()
    insert = (
        f"INSERT INTO decisions ({', '.join((*names, 'instance'))}) VALUES "
        f"({', '.join(['%s'] * (len(names) + 1))}) ON CONFLICT (request_id) DO NOTHING"
    )
    with _reading(url) as connection:
        connection.read_only = False
        with connection.transaction():
            create(connection, "masked" if masked else "none")
            count = "SELECT count(*) FROM decisions"
            before = connection.execute(count).fetchone()[0]
            connection.cursor().executemany(insert, [(*row, instance) for row in decisions])
            copied = connection.execute(count).fetchone()[0] - before
            added = 0
            for request_id, when, label, given_by in feedback:
                added += connection.execute(
                    "INSERT INTO feedback (request_id, time, true_label, instance, source) "
                    "SELECT %s, %s, %s, %s, %s WHERE NOT EXISTS (SELECT 1 FROM feedback "
                    "WHERE request_id = %s AND time = %s AND true_label = %s)",
                    (request_id, when, label, instance, given_by, request_id, when, label),
                ).rowcount
    return {"decisions": len(decisions), "decisions_copied": copied, "feedback": len(feedback),
            "feedback_copied": added}  # fmt: skip
