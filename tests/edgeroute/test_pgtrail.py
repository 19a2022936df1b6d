"""The Postgres trail a fleet shares, on a real Postgres server: its schema, append-only, the
spool while the database is away, migration from SQLite, and the fleet's health report."""

from __future__ import annotations

import json
import subprocess
import time

import httpx
import psycopg
import pytest

from edgeroute.audit import AuditError, AuditLog
from edgeroute.bundle import load_bundle
from edgeroute.config import AuditConfig, load_serve_config
from edgeroute.monitor import fleet_report
from edgeroute.trails import open_trail, training_rows, window
from tests.conftest import PostgresServer
from tests.edgeroute.test_audit import NONE_COLUMNS, SECRET_TEXT, _decision
from tests.services import BIN, edge_service, free_port, replica


def _trail(url: str, tmp_path, instance: str = "edge-1", **settings):
    config = AuditConfig(url=url, spool=tmp_path / f"spool-{instance}.jsonl", **settings)
    return open_trail(config, instance)


def _columns(url: str) -> list[str]:
    with psycopg.connect(url) as db:
        query = "SELECT column_name FROM information_schema.columns WHERE table_name = 'decisions'"
        return [row[0] for row in db.execute(query + " ORDER BY ordinal_position")]


def _count(url: str) -> int:
    with psycopg.connect(url) as db:
        return db.execute("SELECT count(*) FROM decisions").fetchone()[0]


def _until(condition, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "not reached in time"
        time.sleep(0.2)


@pytest.fixture
def own_postgres(monkeypatch):
    """A Postgres server of this test's own, to stop and start."""
    monkeypatch.setenv("EDGEROUTE_AUDIT_KEY", "a fleet's key for the tests")
    server = PostgresServer()
    server.start()
    yield server
    server.remove()


def test_a_postgres_trail_has_the_sqlite_columns_and_names_the_instance_of_each_row(postgres_url, tmp_path):
    trail = _trail(postgres_url, tmp_path)
    trail.record([_decision("a", time.time(), SECRET_TEXT)])
    assert trail.decision("a")["instance"] == "edge-1"
    trail.close()
    assert _columns(postgres_url) == [*NONE_COLUMNS, "instance"]
    with psycopg.connect(postgres_url) as db:
        stored = repr(db.execute("SELECT * FROM decisions").fetchall())
    assert "4111" not in stored and "charged twice" not in stored


def test_a_postgres_trail_refuses_update_delete_and_truncate_and_only_the_purge_deletes(
    postgres_url, tmp_path
):
    trail = _trail(postgres_url, tmp_path)
    now = time.time()
    trail.record([_decision("old", now - 86400 * 10), _decision("new", now)])
    assert trail.feedback("old", "neutral") is True
    for statement in (
        "UPDATE decisions SET label = 'positive'",
        "DELETE FROM decisions",
        "TRUNCATE feedback",
        "DELETE FROM feedback",
    ):
        with (
            psycopg.connect(postgres_url) as db,
            pytest.raises(psycopg.errors.RaiseException, match="append-only"),
        ):
            db.execute(statement)
    assert trail.purge(now - 86400) == 1
    assert trail.decision("old") is None and trail.decision("new") is not None
    with (
        psycopg.connect(postgres_url) as db,
        pytest.raises(psycopg.errors.RaiseException, match="append-only"),
    ):
        db.execute("DELETE FROM decisions")  # the triggers are back
    trail.close()


def _service_role(owner_url: str, role: str) -> str:
    """The URL of ``role``, granted what the operating guide shows: SELECT and INSERT only (a
    role is the cluster's: each test names its own)."""
    with psycopg.connect(owner_url, autocommit=True) as db:
        db.execute(f"DROP ROLE IF EXISTS {role}")
        db.execute(f"CREATE ROLE {role} LOGIN")
        db.execute(f"GRANT SELECT, INSERT ON decisions, feedback TO {role}")
        db.execute(f"GRANT USAGE ON SEQUENCE feedback_id_seq TO {role}")
    return owner_url.replace("edgeroute@", f"{role}@")


def test_a_service_role_granted_only_select_and_insert_writes_and_cannot_change_a_row(postgres_url, tmp_path):
    _trail(postgres_url, tmp_path).close()  # the owner makes the tables
    service_url = _service_role(postgres_url, "edgeroute_service")
    trail = _trail(service_url, tmp_path)
    trail.record([_decision("a", time.time())])
    assert trail.feedback("a", "neutral") is True
    trail.close()
    with psycopg.connect(service_url) as db, pytest.raises(psycopg.errors.InsufficientPrivilege):
        db.execute("UPDATE decisions SET label = 'positive'")


def test_a_service_role_on_a_trail_that_needs_a_new_column_is_told_to_let_the_owner_open_it(
    postgres_url, tmp_path
):
    _trail(postgres_url, tmp_path).close()
    with psycopg.connect(postgres_url, autocommit=True) as db:  # a trail from before feedback sources
        db.execute("ALTER TABLE feedback DROP COLUMN source")
    service_url = _service_role(postgres_url, "edgeroute_reader")
    with pytest.raises(AuditError, match="only the tables' owner may make: open it once as the owner"):
        _trail(service_url, tmp_path)
    _trail(postgres_url, tmp_path).close()  # the owner adds the column
    _trail(service_url, tmp_path).close()


def test_an_unreachable_trail_at_start_is_an_error_unless_told_to_start_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEROUTE_AUDIT_KEY", "k")
    url = f"postgresql://edgeroute:hunter2@127.0.0.1:{free_port()}/audit"
    with pytest.raises(AuditError, match=r"set audit.start_offline=true") as refused:
        _trail(url, tmp_path)
    assert "hunter2" not in str(refused.value)
    trail = _trail(url, tmp_path, start_offline=True)
    trail.record([_decision("a", time.time())])
    assert trail.state()["state"] == "spooling" and trail.spool.holds("a")
    trail.close()


def test_a_postgres_trail_needs_the_fleets_key(postgres_url, tmp_path, monkeypatch):
    monkeypatch.delenv("EDGEROUTE_AUDIT_KEY")
    with pytest.raises(AuditError, match="set EDGEROUTE_AUDIT_KEY"):
        _trail(postgres_url, tmp_path)


def test_rows_wait_in_the_spool_while_postgres_is_away_and_are_written_once_in_order(own_postgres, tmp_path):
    url = own_postgres.database("audit")
    trail = _trail(url, tmp_path)
    start = time.time()
    trail.record([_decision(f"r{i}", start + i) for i in range(3)])
    own_postgres.stop()
    trail.record([_decision(f"r{i}", start + i) for i in range(3, 8)])
    assert trail.state() | {"spooled_bytes": 0} == {
        "state": "spooling", "spooled_rows": 5, "spooled_bytes": 0, "dropped_rows": 0,
    }  # fmt: skip
    own_postgres.start()
    _until(lambda: trail.state()["state"] == "written")
    with psycopg.connect(url) as db:
        rows = db.execute("SELECT request_id FROM decisions ORDER BY time").fetchall()
    assert [r[0] for r in rows] == [f"r{i}" for i in range(8)]
    trail.close()
    # A process killed after a flush wrote its rows, before it emptied its spool: at its next
    # start the rows are written again, and the trail still holds each once.
    spool = tmp_path / "spool-edge-1.jsonl"
    values = trail.values([_decision(f"r{i}", start + i) for i in range(6, 10)])
    spool.write_text("".join(json.dumps([*v, "edge-1"]) + "\n" for v in values))
    again = _trail(url, tmp_path)
    _until(lambda: again.state()["state"] == "written")
    again.close()
    assert _count(url) == 10


def test_the_service_answers_while_its_postgres_trail_is_away_and_keeps_every_row(
    tiny_bundle, own_postgres, tmp_path
):
    url = own_postgres.database("audit")
    service, trail = edge_service(tiny_bundle, tmp_path, None, None, f"audit.url={url}")
    try:
        answered = [
            httpx.post(f"{service.url}/v1/classify", json={"text": f"where is my parcel {i}"})
            for i in range(3)
        ]
        own_postgres.stop()
        answered += [
            httpx.post(f"{service.url}/v1/classify", json={"text": f"my card was charged {i}"})
            for i in range(4)
        ]
        assert [r.status_code for r in answered] == [200] * 7
        ready = httpx.get(f"{service.url}/readyz")
        assert ready.status_code == 200 and ready.json()["audit"]["state"] == "spooling"
        assert ready.json()["audit"]["spooled_rows"] == 4
        assert "edgeroute_audit_spooled_rows 4.0" in httpx.get(f"{service.url}/metrics").text
        spooled = answered[-1].json()["results"][0]["request_id"]
        feedback = httpx.post(f"{service.url}/v1/feedback", json={"request_id": spooled, "label": "negative"})
        assert feedback.status_code == 503 and "waits in the spool" in feedback.json()["detail"]
        own_postgres.start()
        _until(lambda: httpx.get(f"{service.url}/readyz").json()["audit"]["state"] == "written")
        with psycopg.connect(url) as db:
            kept = {row[0] for row in db.execute("SELECT request_id FROM decisions")}
        assert kept == {r.json()["results"][0]["request_id"] for r in answered}
    finally:
        service.stop()
        trail.close()


def test_the_fleet_report_is_the_report_of_the_union_of_both_replicas_requests(
    tiny_bundle, postgres_url, tmp_path
):
    services = [replica(tiny_bundle, tmp_path, postgres_url, name) for name in ("edge-1", "edge-2")]
    results: dict[str, list[dict]] = {"edge-1": [], "edge-2": []}
    try:
        for i in range(24):
            name = "edge-1" if i % 3 else "edge-2"  # 16 and 8 requests
            service = services[int(name[-1]) - 1][0]
            text = f"the refund for order {i} never arrived, this is unacceptable" if i % 4 else f"thanks {i}"
            result = httpx.post(f"{service.url}/v1/classify", json={"text": text}).json()["results"][0]
            results[name].append(result)
            if i % 2:  # feedback at the other replica: one trail
                other = services[1 if name == "edge-1" else 0][0]
                given = httpx.post(
                    f"{other.url}/v1/feedback", json={"request_id": result["request_id"], "label": "negative"}
                )
                assert given.status_code == 200
                result["correct"] = result["label"] == "negative"
    finally:
        for service, trail in services:
            service.stop()
            trail.close()
    thresholds = load_serve_config(None, ["monitor.min_drift_samples=20"]).monitor
    profile = load_bundle(tiny_bundle).profile()
    report = fleet_report(window(postgres_url, time.time() - 3600, 1000), thresholds, profile=profile)
    union = [r for rs in results.values() for r in rs]
    labelled = [r["correct"] for r in union if "correct" in r]
    expected = {
        "requests": 24,
        "edge_share": sum(r["route"] == "edge" for r in union) / 24,
        "cost_per_query": sum(r["cost"] for r in union) / 24,
        "accuracy": sum(labelled) / len(labelled),
        "labelled": len(labelled),
    }
    assert {k: report["metrics"][k] for k in expected} == pytest.approx(expected)
    assert report["metrics"]["feedback_sources"] == {"address 127.0.0.1": len(labelled)}  # an open service
    assert {name: m["requests"] for name, m in report["instances"].items()} == {"edge-1": 16, "edge-2": 8}
    assert report["versions"]["test/1"]["requests"] == 24 and report["model_version"] == "test/1"
    assert report["drift"]["samples"] == 24, "the champion's traffic of both replicas, against its profile"
    edge_1 = results["edge-1"]
    assert report["instances"]["edge-1"]["edge_share"] == pytest.approx(
        sum(r["route"] == "edge" for r in edge_1) / len(edge_1)
    )


def test_migrating_a_sqlite_trail_keeps_every_row_and_its_feedback(postgres_url, tmp_path):
    database = tmp_path / "audit.db"
    box = AuditLog(database, keep_text="masked")
    now = time.time()
    box.record([_decision(f"r{i}", now - 100 + i, f"{SECRET_TEXT} {i}", route="cloud", cloud_label="negative")
                for i in range(5)])  # fmt: skip
    box.feedback("r1", "negative", "helpdesk")
    box.feedback("r3", "positive")  # as feedback was before it had a source
    box.close()
    command = [str(BIN / "edgeroute"), "audit", "migrate", str(database), postgres_url, "--instance", "box-7"]
    first = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    assert "5 of 5 decisions and 2 of 2 feedback labels copied" in first.stdout
    again = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert "0 of 5 decisions and 0 of 2 feedback labels copied" in again.stdout, again.stderr
    assert training_rows(postgres_url) == training_rows(database)
    assert {row["instance"] for row in window(postgres_url, 0, 100)} == {"box-7"}
    sources = {row["request_id"]: row["feedback_source"] for row in window(postgres_url, 0, 100)}
    assert sources == {row["request_id"]: row["feedback_source"] for row in window(database, 0, 100)}
    assert sources["r1"] == "helpdesk" and sources["r3"] is None


def test_a_postgres_trail_that_keeps_no_text_is_refused_as_training_data(postgres_url, tmp_path):
    _trail(postgres_url, tmp_path).close()
    with pytest.raises(AuditError, match=r"kept with audit.keep_text=none.*keep_text=masked"):
        training_rows(postgres_url)
