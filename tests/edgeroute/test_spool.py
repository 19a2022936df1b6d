"""The spool where a Postgres trail's rows wait: order, its bound, and a row torn by a crash."""

from __future__ import annotations

import json

import pytest

from edgeroute.spool import Spool, SpoolFull


def _rows(first: int, count: int) -> list[tuple]:
    return [(f"r{i}", float(i), "masked text <EMAIL_ADDRESS>") for i in range(first, first + count)]


def test_rows_come_back_oldest_first_and_are_forgotten_once_written(tmp_path):
    spool = Spool(tmp_path / "spool.jsonl", 1 << 20)
    spool.append(_rows(0, 3))
    spool.append(_rows(3, 2))
    end, head = spool.head(4)
    assert [row[0] for row in head] == ["r0", "r1", "r2", "r3"]
    spool.advance(end, head)
    assert (spool.rows, spool.holds("r3"), spool.holds("r4")) == (1, False, True)
    end, rest = spool.head(10)
    spool.advance(end, rest)
    assert [row[0] for row in rest] == ["r4"]
    assert spool.rows == 0 and (tmp_path / "spool.jsonl").stat().st_size == 0


def test_rows_still_waiting_when_the_process_dies_are_there_at_its_next_start(tmp_path):
    path = tmp_path / "spool.jsonl"
    spool = Spool(path, 1 << 20)
    spool.append(_rows(0, 3))
    end, head = spool.head(2)
    spool.advance(end, head)  # written, but the file is only emptied once nothing waits
    spool.close()
    with path.open("ab") as handle:  # a row torn mid-write by the crash: never answered
        handle.write(b'["r9", 9.0, "half a ro')
    again = Spool(path, 1 << 20)
    _, rows = again.head(10)
    # Rows already written come back too: the database skips those it holds (request ids are keys).
    assert [row[0] for row in rows] == ["r0", "r1", "r2"]
    assert path.read_bytes().endswith(b"\n")


def test_a_full_spool_refuses_rows_and_says_why(tmp_path):
    row_bytes = len(json.dumps(_rows(0, 1)[0])) + 1
    spool = Spool(tmp_path / "spool.jsonl", 3 * row_bytes)
    spool.append(_rows(0, 3))
    with pytest.raises(SpoolFull, match=r"spool holds 3 rows.*audit.spool_max_mb"):
        spool.append(_rows(3, 1))
    assert spool.rows == 3 and spool.dropped == 0


def test_a_full_spool_told_to_drop_the_oldest_keeps_the_newest_and_counts_what_it_dropped(tmp_path):
    row_bytes = len(json.dumps(_rows(0, 1)[0])) + 1
    spool = Spool(tmp_path / "spool.jsonl", 3 * row_bytes, "drop_oldest")
    for i in range(10):
        spool.append(_rows(i, 1))
    _, rows = spool.head(10)
    assert [row[0] for row in rows] == ["r7", "r8", "r9"]
    assert spool.dropped == 7 and spool.bytes <= 3 * row_bytes
    assert (tmp_path / "spool.jsonl").stat().st_size <= 6 * row_bytes, "the file is compacted"
