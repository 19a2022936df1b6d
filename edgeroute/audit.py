"""The audit trail: every routing decision and every piece of feedback, append-only.

SQLite (WAL) with two tables, ``decisions`` and ``feedback``; triggers refuse any UPDATE or
DELETE, so a row once written stays as written. The one exception is `AuditLog.purge`, which
removes the rows past their retention in a single transaction of its own.

Triggers stop a mistake, not someone who can write the file: they can be dropped. So each row
also carries ``chain``, the HMAC (audit key) of its values and of the previous row's chain, in
write order, one chain a table (`verify`). A row edited, inserted or removed in the middle
breaks the chain from there on; without the key no one can mend it. The trail is verified when
it is opened and by ``edgeroute audit verify``. Retention (`AuditLog.purge`), which holds the
key, chains the rows it keeps anew. What the chain cannot show is rows cut from the end; a
database deleted while its key file stays is refused at open. The chain protects as far as the
key does: a key file beside the database is readable by whoever can write the database.

A text is recorded as a keyed hash (HMAC-SHA256), so the same message can be matched across
requests, and by its length. The key comes from ``EDGEROUTE_AUDIT_KEY`` or from a key file
beside the database, created with owner-only permissions on first use. With
``keep_text="masked"`` a decision also keeps the text as the cloud sees it, personal data
masked (`edgeroute.privacy.mask`), and the cloud's own label and confidence: the columns of
`TRAINING_COLUMNS`, which a trail kept with ``"none"`` does not have. The raw text is never
stored.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from edgeroute.config import KeepText
from edgeroute.privacy import mask

KEY_ENV = "EDGEROUTE_AUDIT_KEY"
# How long a write waits for another process's lock on the database before it gives up.
WAIT_S = 1.0

# confidence is NULL for a cloud answer without one (an LLM that returns no log-probabilities).
_DECISIONS = """
CREATE TABLE IF NOT EXISTS {name} (
    request_id TEXT PRIMARY KEY,
    time REAL NOT NULL,
    model_version TEXT NOT NULL,
    route TEXT NOT NULL,
    reason TEXT NOT NULL,
    label TEXT NOT NULL,
    confidence REAL,
    complexity REAL NOT NULL,
    cost REAL NOT NULL,
    text_hash TEXT NOT NULL
);
"""
# Added since: what the monitor's window is rebuilt from at start (NULL in rows from before).
_MONITORED = {
    "latency_ms": "REAL",
    "text_chars": "INTEGER",
    "unfamiliar_share": "REAL",
    "edge_confidence": "REAL",
    "edge_label": "TEXT",
}
# Added with keep_text="masked" only: what retraining from production learns from. The cloud's
# label and confidence are those of every text it answered, escalated or shadowed.
TRAINING_COLUMNS = {"masked_text": "TEXT", "cloud_label": "TEXT", "cloud_confidence": "REAL"}
_COLUMNS = (
    "request_id", "time", "model_version", "route", "reason", "label", "confidence", "complexity",
    "cost", "text_hash", *_MONITORED,
)  # fmt: skip

_SCHEMA = (
    _DECISIONS.format(name="decisions")
    + """
CREATE TABLE IF NOT EXISTS feedback (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id TEXT NOT NULL REFERENCES decisions(request_id),
    time REAL NOT NULL,
    true_label TEXT NOT NULL
);
"""
)
# Added since: who gave the feedback (`edgeroute.access`; NULL in rows from before).
FEEDBACK_SOURCE = "source"


def first_feedback(column: str, name: str) -> str:
    """The SQL of a decision's first feedback's ``column``, as ``name``."""
    return (
        f"(SELECT {column} FROM feedback f WHERE f.request_id = d.request_id ORDER BY f.id LIMIT 1) AS {name}"
    )


FIRST_FEEDBACK = first_feedback("true_label", "true_label")
# The queries both trails answer, with {p} for the driver's placeholder ("?" or "%s"), and
# {source}: `feedback_source` of a trail, which one written before sources lacks.
RECENT = (
    f"SELECT {', '.join(f'd.{c}' for c in _COLUMNS)}{{extra}}, {FIRST_FEEDBACK}, {{source}} "
    "FROM decisions d WHERE d.time >= {p}{where} ORDER BY d.time DESC LIMIT {p}"
)
TRAINING = (
    f"SELECT d.time, d.masked_text, d.route, d.edge_label, d.cloud_label, {FIRST_FEEDBACK} "
    "FROM decisions d WHERE d.time >= {p} ORDER BY d.time, d.request_id"
)
NO_TEXT_KEPT = (
    "this trail was kept with audit.keep_text=none, so it holds a keyed hash of each text and never "
    "the text: there is nothing to learn from. Serve with audit.keep_text=masked to keep the masked texts"
)
# Each table's chained values, in order; a row's chain is HMAC(key, previous chain + its values).
CHAINED = {
    "decisions": (*_COLUMNS, *TRAINING_COLUMNS),
    "feedback": ("request_id", "time", "true_label", FEEDBACK_SOURCE),
}
_APPEND_ONLY = """
CREATE TRIGGER IF NOT EXISTS {table}_no_{action} BEFORE {action} ON {table}
BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END;
"""


class AuditError(ValueError):
    """An audit trail that cannot be kept as it must be."""


class AuditUnavailable(RuntimeError):
    """The trail cannot be written or read now: another process holds its lock, or the disk is full."""


class FeedbackConflict(ValueError):
    """Feedback that contradicts the label already recorded for the request."""

    def __init__(self, request_id: str, recorded: str) -> None:
        super().__init__(f"request_id: {request_id!r} already has the feedback label {recorded!r}")
        self.recorded = recorded


def key_path(database: Path) -> Path:
    return database.with_suffix(database.suffix + ".key")


def audit_key(database: Path) -> bytes:
    """The HMAC key: ``EDGEROUTE_AUDIT_KEY``, else ``<database>.key`` (made on first use, mode 600)."""
    if os.environ.get(KEY_ENV):
        return os.environ[KEY_ENV].encode()
    path = key_path(database)
    if not path.exists():
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(secrets.token_hex(32))
    key = path.read_text().strip()
    if not key:
        raise AuditError(
            f"{path}: the audit key file is empty; remove it to make a new key, or set {KEY_ENV}"
        )
    return key.encode()


class Trail:
    """What the SQLite and the Postgres trail share: the keyed hash, and the row written for a
    decision. ``failure`` says why the last use of the trail failed; None once one succeeds."""

    failure: str | None = None

    def __init__(self, key: bytes, keep_text: KeepText) -> None:
        self._key = key
        self.keep_text = keep_text
        self.columns = (*_COLUMNS, *TRAINING_COLUMNS) if keep_text == "masked" else _COLUMNS

    def state(self) -> dict:
        """How the trail is kept now (`edgeroute.pgtrail.PostgresTrail.state` has a spool)."""
        kept = "written" if self.failure is None else "unavailable"
        return {"state": kept, "spooled_rows": 0, "spooled_bytes": 0, "dropped_rows": 0}

    def text_hash(self, text: str) -> str:
        return hmac.new(self._key, text.encode(), hashlib.sha256).hexdigest()

    def values(self, rows: Iterable[dict]) -> list[tuple]:
        """Each decision as the trail stores it (`columns`), from request_id, model_version, route,
        reason, label, confidence, complexity, cost and the text (hashed here; its length is kept,
        and with keep_text "masked" its masked form: masked_text where the cloud was sent it, else
        masked here), and optionally time, the monitored values (latency_ms, unfamiliar_share,
        edge_confidence, edge_label) and the cloud's answer (cloud_label, and confidence for an
        escalated row)."""
        now = time.time()
        return [
            (r["request_id"], r.get("time", now), r["model_version"], r["route"], r["reason"], r["label"],
             r["confidence"], r["complexity"], r["cost"], self.text_hash(r["text"]),
             r.get("latency_ms"), len(r["text"]), r.get("unfamiliar_share"), r.get("edge_confidence"),
             r.get("edge_label"))
            + ((r.get("masked_text") or mask(r["text"]), r.get("cloud_label"),
                r["confidence"] if r["route"] == "cloud" else None)
               if self.keep_text == "masked" else ())
            for r in rows
        ]  # fmt: skip


def feedback_source(columns: Iterable[str]) -> str:
    """`RECENT`'s ``{source}``, for a feedback table of ``columns``."""
    have = FEEDBACK_SOURCE in set(columns)
    return first_feedback(FEEDBACK_SOURCE, "feedback_source") if have else "NULL AS feedback_source"


def chained(key: bytes, previous: str, values: Iterable) -> str:
    """A row's chain: the HMAC of the previous row's chain and of the row's values."""
    return hmac.new(key, (previous + json.dumps(list(values))).encode(), hashlib.sha256).hexdigest()


def verify(db: sqlite3.Connection, key: bytes, source: object) -> dict[str, int]:
    """Recompute each table's chain in write order; `AuditError` naming the first row whose chain
    does not follow. Returns the rows verified a table, and those written before the trail was
    chained (``unchained_<table>``: oldest first, never after a chained row)."""
    counts = {}
    for table in CHAINED:
        previous, verified, unchained = "", 0, 0
        for rowid, values, chain in _chained_rows(db, table):
            where = f"{source}: {table} row {rowid} (request_id {values[0]!r})"
            if chain is None:
                if previous:
                    raise AuditError(f"{where} has no chain after chained rows: the trail was altered")
                unchained += 1
                continue
            if chained(key, previous, values) != chain:
                raise AuditError(f"{where} does not follow the row before it: the trail was altered")
            previous, verified = chain, verified + 1
        counts |= {table: verified, f"unchained_{table}": unchained}
    return counts


def _chained_rows(db: sqlite3.Connection, table: str) -> Iterator[tuple[int, tuple, str | None]]:
    """Each row of ``table`` in write order: its rowid, its `covered` values and its chain."""
    present = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
    selected = ", ".join(c if c in present else "NULL" for c in (*CHAINED[table], "chain"))
    for row in db.execute(f"SELECT rowid, {selected} FROM {table} ORDER BY rowid"):
        yield row[0], covered(table, row[1:-1]), row[-1]


def covered(table: str, values: tuple) -> tuple:
    """The values of a row of ``table`` that its chain covers: a feedback row's source only where
    it has one (rows written before feedback had sources were chained without it)."""
    return values[:-1] if table == "feedback" and values[-1] is None else values


class AuditLog(Trail):
    """Append-only SQLite record of decisions and feedback; safe to share between threads."""

    def __init__(self, database: Path, keep_text: KeepText = "none") -> None:
        gone = not database.exists() and key_path(database).exists()
        database.parent.mkdir(parents=True, exist_ok=True)
        key = audit_key(database)  # an empty key file is named first
        if gone:
            raise AuditError(
                f"{database}: the audit trail is gone but its key file {key_path(database)} is there: "
                "restore the database, or remove the key file to start a new trail"
            )
        self.path = database
        super().__init__(key, keep_text)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(database, timeout=WAIT_S, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # WAL with NORMAL sync: a crash of the service loses nothing; only a power cut can lose
        # the last commits. FULL would fsync every request.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(_SCHEMA)
        self._allow_no_confidence()
        present = {row[1] for row in self._db.execute("PRAGMA table_info(decisions)")}
        added = _MONITORED | (TRAINING_COLUMNS if keep_text == "masked" else {})
        for column, kind in added.items():
            if column not in present:
                self._db.execute(f"ALTER TABLE decisions ADD COLUMN {column} {kind}")
        for table, column in (*((table, "chain") for table in CHAINED), ("feedback", FEEDBACK_SOURCE)):
            if column not in {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}:
                self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column} TEXT")
        self._append_only()
        self.verified = verify(self._db, self._key, database)

    def _head(self, table: str) -> str:
        """The last chain of ``table`` (inside the write's transaction), "" for the first row."""
        row = self._db.execute(f"SELECT chain FROM {table} ORDER BY rowid DESC LIMIT 1").fetchone()
        return row[0] if row and row[0] is not None else ""

    def _append_only(self) -> None:
        for table in ("decisions", "feedback"):
            for action in ("UPDATE", "DELETE"):
                self._db.execute(_APPEND_ONLY.format(table=table, action=action))

    def _allow_no_confidence(self) -> None:
        """A trail written before confidence could be NULL, rebuilt with the column nullable:
        SQLite cannot drop a NOT NULL constraint in place. Every row is kept as written."""
        columns = {row[1]: row[3] for row in self._db.execute("PRAGMA table_info(decisions)")}
        if not columns["confidence"]:
            return
        self._db.execute("PRAGMA foreign_keys=OFF")
        self._db.executescript(
            "BEGIN;"
            + "".join(f"DROP TRIGGER IF EXISTS decisions_no_{action};" for action in ("UPDATE", "DELETE"))
            + _DECISIONS.format(name="decisions_nullable")
            + f"INSERT INTO decisions_nullable SELECT {', '.join(_COLUMNS[:10])} FROM decisions;"
            "DROP TABLE decisions;"
            "ALTER TABLE decisions_nullable RENAME TO decisions;"
            "COMMIT;"
        )
        self._db.execute("PRAGMA foreign_keys=ON")

    def record(self, rows: Iterable[dict]) -> None:
        """Decisions, as `Trail.values` reads them, each chained to the one before."""
        values = self.values(rows)
        columns = (*self.columns, "chain")
        insert = f"INSERT INTO decisions ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
        width = len(CHAINED["decisions"])
        with self._lock, self._available(), self._transaction():
            chain = self._head("decisions")
            for row in values:
                chain = chained(self._key, chain, (*row, *(None,) * (width - len(row))))
                self._db.execute(insert, (*row, chain))

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """One writer from reading the chain's head to the last insert (another process too)."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def purge(self, before: float) -> int:
        """Remove the decisions older than ``before`` (seconds since the epoch) and their
        feedback; return how many decisions went. The one path that deletes or updates: in one
        transaction the triggers are lifted, the old rows deleted, the rows kept chained anew from
        the first (the key's holder may), and the triggers put back, so no other writer ever sees
        the trail without them."""
        old = "SELECT request_id FROM decisions WHERE time < ?"
        with self._lock, self._transaction():
            for table in CHAINED:
                for action in ("UPDATE", "DELETE"):
                    self._db.execute(f"DROP TRIGGER {table}_no_{action}")
            self._db.execute(f"DELETE FROM feedback WHERE request_id IN ({old})", (before,))
            removed = self._db.execute("DELETE FROM decisions WHERE time < ?", (before,)).rowcount
            for table in CHAINED:
                chain = ""
                for rowid, values, _ in list(_chained_rows(self._db, table)):
                    chain = chained(self._key, chain, values)
                    self._db.execute(f"UPDATE {table} SET chain = ? WHERE rowid = ?", (chain, rowid))
            self._append_only()
        return removed

    @contextlib.contextmanager
    def _available(self) -> Iterator[None]:
        """`AuditUnavailable` for what SQLite cannot do now (locked past ``WAIT_S``, disk full),
        remembered in ``failure`` until the trail is used again with success."""
        try:
            yield
        except sqlite3.OperationalError as exc:
            self.failure = f"{self.path}: {exc}"
            raise AuditUnavailable(self.failure) from None
        self.failure = None

    def feedback(self, request_id: str, true_label: str, source: str | None = None) -> bool:
        """Record the true label of a request, once, with the ``source`` that gave it: True when
        recorded, False when the same label was already there. A different label for the same
        request raises `FeedbackConflict`."""
        with self._lock, self._available(), self._transaction():  # one writer from check to insert
            row = self._db.execute(
                "SELECT true_label FROM feedback WHERE request_id = ? ORDER BY id LIMIT 1", (request_id,)
            ).fetchone()
            if row is None:
                values = (request_id, time.time(), true_label, source)
                chain = chained(self._key, self._head("feedback"), covered("feedback", values))
                self._db.execute(
                    "INSERT INTO feedback (request_id, time, true_label, source, chain) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (*values, chain),
                )
        if row is not None and row[0] != true_label:
            raise FeedbackConflict(request_id, row[0])
        return row is None

    def decision(self, request_id: str) -> dict | None:
        with self._lock, self._available():
            cursor = self._db.execute("SELECT * FROM decisions WHERE request_id = ?", (request_id,))
            row = cursor.fetchone()
            names = [c[0] for c in cursor.description]
        return dict(zip(names, row, strict=True)) if row else None

    def recent(self, since: float, limit: int) -> list[dict]:
        """The decisions from ``since`` on, the newest ``limit`` of them, oldest first, each with
        the first feedback label it got (``true_label``, None without)."""
        with self._lock:
            query = RECENT.format(p="?", where="", extra="", source=feedback_source([FEEDBACK_SOURCE]))
            cursor = self._db.execute(query, (since, limit))
            names = [c[0] for c in cursor.description]
            rows = cursor.fetchall()
        return [dict(zip(names, row, strict=True)) for row in reversed(rows)]

    def close(self) -> None:
        with self._lock:
            self._db.close()


@contextlib.contextmanager
def _reading(database: Path) -> Iterator[sqlite3.Connection]:
    """The SQLite trail at ``database``, read-only; `AuditError` naming what is wrong with it."""
    if not database.is_file():
        raise AuditError(f"{database}: no audit trail there")
    db = sqlite3.connect(f"{database.resolve().as_uri()}?mode=ro", uri=True)
    try:
        if not db.execute("PRAGMA table_info(decisions)").fetchall():
            raise AuditError(f"{database}: not an audit trail (no decisions table)")
        yield db
    except sqlite3.DatabaseError as exc:
        raise AuditError(f"{database}: not readable as an audit trail ({exc})") from None
    finally:
        db.close()


def _rows(cursor: sqlite3.Cursor) -> list[dict]:
    names = [c[0] for c in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor]


def verify_trail(database: Path) -> dict[str, int]:
    """`verify` a SQLite trail, read-only, with its key (``EDGEROUTE_AUDIT_KEY`` or its key file,
    never made here)."""
    if not os.environ.get(KEY_ENV) and not key_path(database).is_file():
        missing = key_path(database)
        raise AuditError(f"{database}: no key to verify it with: set {KEY_ENV} or restore {missing}")
    key = audit_key(database)
    with _reading(database) as db:
        return verify(db, key, database)


def training_rows(database: Path, since: float | None = None) -> list[dict]:
    """What a SQLite trail kept with keep_text="masked" holds for retraining
    (`edgeroute.trails.training_rows`)."""
    with _reading(database) as db:
        columns = {row[1] for row in db.execute("PRAGMA table_info(decisions)")}
        if not set(TRAINING_COLUMNS) <= columns:
            raise AuditError(f"{database}: {NO_TEXT_KEPT}")
        return _rows(db.execute(TRAINING.format(p="?"), (since if since is not None else float("-inf"),)))


def window(database: Path, since: float, limit: int) -> list[dict]:
    """The decisions of a SQLite trail from ``since`` on (`edgeroute.trails.window`), its one
    service named by the trail's path."""
    with _reading(database) as db:
        source = feedback_source(row[1] for row in db.execute("PRAGMA table_info(feedback)"))
        rows = _rows(db.execute(RECENT.format(p="?", where="", extra="", source=source), (since, limit)))
    return [row | {"instance": str(database)} for row in reversed(rows)]
