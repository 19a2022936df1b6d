"""The runtime's table reader: values as written, and errors that name the file, line, row, column."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from edgeroute.tables import TableError, read_messages, read_table


def test_csv_values_stay_strings_as_written_and_short_rows_miss_their_tail(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text('text,label\nNA,02\n"a, quoted\nline",x\nshort\n', encoding="utf-8")
    columns, rows = read_table(path)
    assert columns == ["text", "label"]
    assert rows == [
        {"text": "NA", "label": "02"},
        {"text": "a, quoted\nline", "label": "x"},
        {"text": "short", "label": None},
    ]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("text,label,label\nhi,a,b\n", r"column 'label' appears more than once"),
        ("text,label\nhi,a\nhi,a,extra\n", r"malformed CSV \(Expected 2 fields in line 3, saw 3\)"),
    ],
)
def test_csv_that_cannot_be_read_as_a_table_is_refused(tmp_path, content, message):
    (tmp_path / "bad.csv").write_text(content)
    with pytest.raises(TableError, match=r"bad\.csv: " + message):
        read_table(tmp_path / "bad.csv")


def test_jsonl_and_parquet_read_the_same_messages(tmp_path):
    records = [{"text": "where is my parcel", "label": 1}, {"text": "thanks", "label": 0, "extra": True}]
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n\n")
    pq.write_table(pa.Table.from_pylist(records), tmp_path / "m.parquet")
    for name in ("m.jsonl", "m.parquet"):
        texts, labels = read_messages(tmp_path / name, "text", "label")
        assert texts == ["where is my parcel", "thanks"] and labels == ["1", "0"], name
    assert read_table(tmp_path / "m.jsonl")[0] == ["text", "label", "extra"]


def test_messages_need_their_column_and_a_text_in_every_row(tmp_path):
    (tmp_path / "m.csv").write_text("message\nhello\n\n \n")
    with pytest.raises(TableError, match=r"column 'text' not found; columns are: 'message'"):
        read_messages(tmp_path / "m.csv", "text")
    with pytest.raises(TableError, match=r"m\.csv: row 2, column 'message': empty or not text"):
        read_messages(tmp_path / "m.csv", "message")
