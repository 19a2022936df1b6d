"""The audit trail's text policy and retention: `keep_text`, `purge`, `training_rows`."""

from __future__ import annotations

import sqlite3
import time

import httpx
import pytest

from edgeroute.audit import (
    _SCHEMA,
    TRAINING_COLUMNS,
    AuditError,
    AuditLog,
    audit_key,
    chained,
    training_rows,
    verify_trail,
)
from tests.services import BIN, edge_service, run_cli

SECRET_TEXT = "my card 4111 1111 1111 1111 was charged twice, mail ben.482@example.com"
# The decisions table of a trail kept with keep_text "none", column by column, as it was before
# text could be kept: such a trail must not change (the SQLite trail adds its chain, a MAC).
NONE_COLUMNS = [
    "request_id", "time", "model_version", "route", "reason", "label", "confidence", "complexity",
    "cost", "text_hash", "latency_ms", "text_chars", "unfamiliar_share", "edge_confidence", "edge_label",
]  # fmt: skip


def _decision(request_id: str, when: float, text: str = "where is my parcel", **extra) -> dict:
    return {
        "request_id": request_id, "time": when, "model_version": "1", "route": "edge", "reason": "confident",
        "label": "neutral", "confidence": 0.95, "complexity": 0.1, "cost": 0.001, "text": text,
        "edge_label": "neutral", "edge_confidence": 0.95,
    } | extra  # fmt: skip


def _schema(database) -> list[tuple]:
    with sqlite3.connect(database) as db:
        return db.execute("SELECT type, name, sql FROM sqlite_master ORDER BY name").fetchall()


def _stored_bytes(tmp_path) -> bytes:
    return b"".join(p.read_bytes() for p in tmp_path.glob("audit.db*") if not p.name.endswith(".key"))


def test_keep_text_none_leaves_the_trail_as_it_was_and_holds_no_text(tmp_path):
    database = tmp_path / "audit.db"
    trail = AuditLog(database)
    trail.record([_decision("a", time.time(), SECRET_TEXT)])
    trail.close()
    with sqlite3.connect(database) as db:
        assert [row[1] for row in db.execute("PRAGMA table_info(decisions)")] == [*NONE_COLUMNS, "chain"]
    assert b"4111" not in _stored_bytes(tmp_path) and b"charged twice" not in _stored_bytes(tmp_path)
    with pytest.raises(AuditError, match=r"kept with audit.keep_text=none.*keep_text=masked"):
        training_rows(database)


def test_a_masked_trail_keeps_what_the_cloud_saw_and_its_answer_never_the_raw_text(
    escalating_bundle, tmp_path
):
    running, audit = edge_service(escalating_bundle, tmp_path, None, None, "audit.keep_text=masked")
    try:
        result = httpx.post(f"{running.url}/v1/classify", json={"text": SECRET_TEXT}).json()["results"][0]
        feedback = httpx.post(
            f"{running.url}/v1/feedback", json={"request_id": result["request_id"], "label": "negative"}
        )
        assert feedback.status_code == 200
    finally:
        running.stop()
        audit.close()
    assert result["route"] == "cloud"
    [row] = training_rows(tmp_path / "audit.db")
    assert row["masked_text"].startswith("my card <") and "charged twice, mail <" in row["masked_text"]
    assert row["cloud_label"] == result["label"] and row["true_label"] == "negative"
    with sqlite3.connect(tmp_path / "audit.db") as db:
        confidence, edge = db.execute("SELECT cloud_confidence, edge_confidence FROM decisions").fetchone()
    assert confidence == pytest.approx(result["confidence"]) and edge is not None
    stored = _stored_bytes(tmp_path)
    for fragment in (b"4111", b"ben.482", b"example.com"):
        assert fragment not in stored


def test_opening_a_kept_trail_with_masked_adds_the_columns_and_keeps_every_row(tmp_path):
    database = tmp_path / "audit.db"
    AuditLog(database).record([_decision("old", time.time())])
    trail = AuditLog(database, keep_text="masked")
    trail.record([_decision("new", time.time())])
    rows = training_rows(database)
    assert [r["masked_text"] for r in rows] == [None, "where is my parcel"]
    assert set(TRAINING_COLUMNS) <= {c for c in trail.decision("old")}


def test_the_purge_removes_old_rows_and_their_feedback_and_nothing_else_can(tmp_path):
    database = tmp_path / "audit.db"
    trail = AuditLog(database, keep_text="masked")
    now = time.time()
    trail.record([_decision("old", now - 10 * 86400), _decision("new", now)])
    trail.feedback("old", "negative")
    trail.feedback("new", "positive")
    schema = _schema(database)
    assert trail.purge(now - 86400) == 1
    assert trail.decision("old") is None and trail.decision("new") is not None
    assert _schema(database) == schema  # the triggers are back, as they were
    with sqlite3.connect(database) as db:
        assert db.execute("SELECT request_id FROM feedback").fetchall() == [("new",)]
        for statement in (
            "DELETE FROM decisions",
            "UPDATE decisions SET label = 'x'",
            "DELETE FROM feedback",
        ):
            with pytest.raises(sqlite3.IntegrityError, match="append-only"):
                db.execute(statement)
    assert trail.purge(now - 86400) == 0
    trail.close()
    counts = verify_trail(database)  # the rows kept, chained anew
    assert counts == {"decisions": 1, "unchained_decisions": 0, "feedback": 1, "unchained_feedback": 0}


def _three_decisions_and_their_feedback(database) -> None:
    trail = AuditLog(database)
    now = time.time()
    trail.record([_decision("a", now), _decision("b", now + 1)])
    trail.record([_decision("c", now + 2)])
    for request_id in ("a", "b", "c"):
        trail.feedback(request_id, "neutral", "helpdesk")
    trail.close()


def _behind_the_triggers(database, *statements: str) -> None:
    """What someone who can write the file can do: drop the triggers and change the rows."""
    with sqlite3.connect(database) as db:
        for table in ("decisions", "feedback"):
            for action in ("UPDATE", "DELETE"):
                db.execute(f"DROP TRIGGER {table}_no_{action}")
        for statement in statements:
            db.execute(statement)


@pytest.mark.parametrize(
    ("statements", "named"),
    [
        (["UPDATE decisions SET label = 'positive' WHERE request_id = 'b'"],
         "decisions row 2 (request_id 'b')"),
        (["DELETE FROM decisions WHERE request_id = 'b'", "DELETE FROM feedback WHERE request_id = 'b'"],
         "decisions row 3 (request_id 'c')"),
        (["UPDATE feedback SET true_label = 'negative' WHERE request_id = 'c'"],
         "feedback row 3 (request_id 'c')"),
        (["UPDATE decisions SET chain = NULL WHERE request_id = 'c'"],
         "decisions row 3 (request_id 'c') has no chain"),
        (["UPDATE feedback SET source = 'crm' WHERE request_id = 'b'"], "feedback row 2 (request_id 'b')"),
        (["UPDATE feedback SET source = NULL WHERE request_id = 'b'"], "feedback row 2 (request_id 'b')"),
    ],
    ids=["edited", "removed", "feedback-edited", "chain-removed", "source-edited", "source-removed"],
)  # fmt: skip
def test_a_row_altered_behind_the_triggers_is_named_at_open_and_by_audit_verify(tmp_path, statements, named):
    database = tmp_path / "audit.db"
    _three_decisions_and_their_feedback(database)
    assert verify_trail(database)["decisions"] == 3
    _behind_the_triggers(database, *statements)
    with pytest.raises(AuditError, match="the trail was altered") as refused:
        AuditLog(database)
    assert named in str(refused.value)
    result = run_cli([str(BIN / "edgeroute"), "audit", "verify", str(database)], tmp_path)
    assert result.returncode == 1 and named in result.stderr


def test_a_trail_from_before_the_chain_is_kept_and_chained_from_then_on(tmp_path):
    database = tmp_path / "audit.db"
    with sqlite3.connect(database) as old:  # the schema of the last release, without a chain
        old.executescript(_SCHEMA)
        old.execute(
            "INSERT INTO decisions (request_id, time, model_version, route, reason, label, confidence, "
            "complexity, cost, text_hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            ("r0", 1.0, "m/1", "edge", "confident", "neutral", 0.9, 0.1, 0.001, "h"),
        )
    trail = AuditLog(database)
    trail.record([_decision("r1", time.time())])
    trail.close()
    result = run_cli([str(BIN / "edgeroute"), "audit", "verify", str(database)], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "1 decisions and 0 feedback labels verified" in result.stdout
    assert "1 rows from before the trail was chained" in result.stdout


def test_feedback_chained_before_it_had_a_source_still_verifies(tmp_path):
    database = tmp_path / "audit.db"
    trail = AuditLog(database)
    trail.record([_decision("a", time.time()), _decision("b", time.time())])
    trail.close()
    with sqlite3.connect(database) as db:  # the last release's feedback table: chained, no source
        db.execute("ALTER TABLE feedback DROP COLUMN source")
        values = ("a", 5.0, "neutral")
        chain = chained(audit_key(database), "", values)
        db.execute(
            "INSERT INTO feedback (request_id, time, true_label, chain) VALUES (?, ?, ?, ?)", (*values, chain)
        )
    trail = AuditLog(database)  # verified at open, and given the column
    trail.feedback("b", "positive", "crm")
    sources = [(r["request_id"], r["feedback_source"]) for r in trail.recent(0, 10)]
    assert sources == [("a", None), ("b", "crm")]
    trail.close()
    assert verify_trail(database) == {"decisions": 2, "unchained_decisions": 0, "feedback": 2,
                                      "unchained_feedback": 0}  # fmt: skip


def test_a_deleted_trail_whose_key_file_remains_is_refused_not_started_anew(tmp_path):
    database = tmp_path / "audit.db"
    _three_decisions_and_their_feedback(database)
    for path in tmp_path.glob("audit.db*"):
        if not path.name.endswith(".key"):
            path.unlink()
    with pytest.raises(AuditError, match="the audit trail is gone but its key file"):
        AuditLog(database)
    assert not database.exists()


def test_the_service_purges_rows_past_retention_at_start(tiny_bundle, tmp_path):
    database = tmp_path / "audit.db"
    trail = AuditLog(database)
    trail.record([_decision("old", time.time() - 3 * 86400), _decision("recent", time.time() - 3600)])
    trail.close()
    running, audit = edge_service(tiny_bundle, tmp_path, None, None, "audit.retention_days=2")
    try:
        deadline = time.monotonic() + 30
        while audit.decision("old") is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert audit.decision("old") is None and audit.decision("recent") is not None
    finally:
        running.stop()
        audit.close()


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "no audit trail there"), (b"not a database at all" * 100, "not readable as an audit trail")],
)
def test_training_rows_name_what_is_wrong_with_the_trail(tmp_path, content, message):
    database = tmp_path / "trail.db"
    if content is not None:
        database.write_bytes(content)
    with pytest.raises(AuditError, match=message):
        training_rows(database)
