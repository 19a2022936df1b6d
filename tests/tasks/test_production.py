"""Production as a data source (`data.production`): label precedence, the test split kept out,
the holdout by time, too few rows, and no raw personal data in what the data stage writes."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pandas as pd
import pytest

from edgeroute.audit import AuditLog
from tasks.data import DataValidationError, prepare_dataset
from tasks.support.config import load_config

EMAIL = "ben.482@example.com"


def _config(tmp_path: Path, *overrides: str):
    return load_config("tiny", [f"work_dir={tmp_path / 'work'}", *overrides])


def _production(tmp_path: Path, trail: Path, *overrides: str):
    return prepare_dataset(_config(tmp_path, f"data.production.trail={trail}", *overrides))


def _row(request_id: str, when: float, text: str, route: str, label: str, cloud_label: str | None) -> dict:
    return {
        "request_id": request_id, "time": when, "model_version": "1", "route": route, "reason": "r",
        "label": label, "confidence": 0.6, "complexity": 0.1, "cost": 0.01, "text": text,
        "edge_label": "neutral", "edge_confidence": 0.6, "cloud_label": cloud_label,
    }  # fmt: skip


@pytest.fixture
def trail(tmp_path):
    """A masked trail of 40 escalated texts (10 with feedback that overrules the cloud), 8
    edge-only texts (4 with feedback), one text of the base test split and one with an e-mail."""
    _, splits = prepare_dataset(_config(tmp_path))
    test_text = splits["test"]["text"].iloc[0]
    database = tmp_path / "audit.db"
    audit = AuditLog(database, keep_text="masked")
    start = time.time() - 3600
    rows = [
        _row(f"c{i}", start + i, f"production order {i} never arrived", "cloud", "negative", "negative")
        for i in range(40)
    ]
    rows += [
        _row(f"e{i}", start + 100 + i, f"production question {i} about fees", "edge", "neutral", None)
        for i in range(8)
    ]
    rows += [_row("test", start + 200, test_text, "cloud", "positive", "positive")]
    rows += [_row("pii", start + 201, f"write to {EMAIL} about order 7", "cloud", "neutral", "neutral")]
    audit.record(rows)
    for i in range(10):
        audit.feedback(f"c{i}", "positive")
    for i in range(4):
        audit.feedback(f"e{i}", "positive")
    audit.close()
    return database, splits


def test_production_rows_join_the_splits_by_label_precedence_and_the_test_split_stays(tmp_path, trail):
    database, base = trail
    prepared, splits = _production(tmp_path, database, "data.production.min_rows=10")
    counts = prepared.production
    feedback_rows = 10 + 4
    holdout = math.ceil(feedback_rows * 0.2)
    assert counts["decisions"] == 50 and counts["edge_only"] == 4 and counts["in_test_split"] == 1
    assert counts["holdout"] == holdout and counts["feedback"] == feedback_rows - holdout
    assert counts["cloud"] == 30 + 1  # the c rows without feedback, and the e-mail's
    # Shared 7 : 1 : 1 as the base set's train, validation and calibration fractions are.
    assert [counts[f"to_{name}"] for name in ("train", "validation", "calibration")] == [33, 4, 5]
    for name in ("train", "validation", "calibration"):
        assert len(splits[name]) == len(base[name]) + counts[f"to_{name}"]
    learnt = pd.concat([splits[name] for name in ("train", "validation", "calibration")])
    labels = dict(zip(learnt["text"], learnt["label"], strict=True))
    # Feedback overrules the cloud; an edge answer is never a label; the test split stays out.
    assert labels["production order 0 never arrived"] == "positive"
    assert labels["production order 20 never arrived"] == "negative"
    assert "production question 5 about fees" not in labels and "production question 0 about fees" in labels
    pd.testing.assert_frame_equal(splits["test"], base["test"])
    assert prepared.split_counts["production_holdout"] == holdout
    assert prepared.source.endswith(f"+ production({database})")


def test_the_holdout_is_the_latest_feedback_and_is_never_trained_on(tmp_path, trail):
    database, _ = trail
    prepared, splits = _production(tmp_path, database, "data.production.min_rows=10")
    holdout = pd.read_parquet(prepared.path("production_holdout"))
    # The latest feedback-labelled rows are e3, e2, e1: the edge-only texts come last in time.
    assert set(holdout["text"]) == {f"production question {i} about fees" for i in (1, 2, 3)}
    assert set(holdout["label"]) == {"positive"}
    learnt = pd.concat([splits[name] for name in ("train", "validation", "calibration")])
    assert not set(holdout["text"]) & set(learnt["text"])


def test_no_raw_personal_data_in_anything_the_data_stage_writes(tmp_path, trail):
    database, _ = trail
    prepared, splits = _production(tmp_path, database, "data.production.min_rows=10")
    learnt = pd.concat([splits[name] for name in ("train", "validation", "calibration")])
    assert any(text.startswith("write to <") for text in learnt["text"])
    for path in prepared.directory.iterdir():
        assert b"ben.482" not in path.read_bytes(), path  # the base set has generated e-mails of its own
    assert b"ben.482" not in database.read_bytes()


def test_too_few_rows_is_an_error_before_any_training_naming_the_counts(tmp_path, trail):
    database, _ = trail
    counts = r"\(decisions 50, no_text 0, edge_only 4, unknown_label 0, in_test_split 1, in_base_set 0"
    with pytest.raises(
        DataValidationError, match=rf"42 rows to learn from, fewer than .*min_rows=100 {counts}"
    ):
        _production(tmp_path, database, "data.production.min_rows=100")
    assert len(list((tmp_path / "work" / "data").iterdir())) == 1  # the base set's, and no other


def test_feedback_alone_as_the_label_source_leaves_the_clouds_answers_out(tmp_path, trail):
    database, _ = trail
    prepared, _ = _production(
        tmp_path, database, "data.production.min_rows=5", "data.production.labels=[feedback]",
        "data.production.holdout_share=0",
    )  # fmt: skip
    assert prepared.production["feedback"] == 14 and prepared.production["cloud"] == 0
    assert prepared.production["edge_only"] == 4 + 32  # without feedback the cloud rows are unlabelled too


def test_a_trail_kept_without_text_is_refused_as_a_source(tmp_path):
    database = tmp_path / "audit.db"
    AuditLog(database).close()
    with pytest.raises(DataValidationError, match=r"data.production.trail: .*kept with audit.keep_text=none"):
        _production(tmp_path, database)
