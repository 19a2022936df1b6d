"""Tables of messages (CSV, JSONL, Parquet) read as written, with errors naming the file, line and row.

The runtime reads a user's messages with this (``simulate``, batch routing); the training
pipeline's data stage reads its labelled file with it too. CSV and JSONL need nothing beyond
the standard library; Parquet needs ``pyarrow``.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edgeroute.router import unicode_problem

FORMATS = {".csv": "CSV", ".jsonl": "JSONL", ".json": "JSONL", ".parquet": "Parquet"}
SHOWN = 5  # offending rows named in an error message


class TableError(ValueError):
    """A table that cannot be read or used, with the file, line, row or column at fault."""


def rows_phrase(index: Sequence[int]) -> str:
    """Name offending rows 1-based, as a person counts data rows under the header."""
    shown = ", ".join(str(i + 1) for i in list(index)[:SHOWN])
    more = len(index) - SHOWN
    return f"row {shown}" if len(index) == 1 else f"rows {shown}" + (f" and {more} more" if more > 0 else "")


def _decode(path: Path) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise TableError(
            f"{path}: line {line}, byte {exc.start}: not valid UTF-8 ({exc.reason}); "
            "re-save the file as UTF-8"
        ) from None


def _csv(path: Path, text: str) -> tuple[list[str], list[dict[str, Any]]]:
    """CSV rows, every value a string as written; a missing trailing field is None."""
    reader = csv.reader(io.StringIO(text, newline=""))
    previous = csv.field_size_limit(len(text) + 1)  # a field may be as long as the file: no limit
    try:
        columns = next(reader)
        repeated = sorted({c for c in columns if columns.count(c) > 1})
        if repeated:
            raise TableError(f"{path}: column {', '.join(map(repr, repeated))} appears more than once")
        records = []
        for values in reader:
            if not values:
                continue
            if len(values) > len(columns):
                raise TableError(
                    f"{path}: malformed CSV (Expected {len(columns)} fields in line {reader.line_num}, "
                    f"saw {len(values)})"
                )
            records.append(dict(zip(columns, values + [None] * (len(columns) - len(values)), strict=True)))
    except csv.Error as exc:
        raise TableError(f"{path}: malformed CSV (line {reader.line_num}: {exc})") from None
    finally:
        csv.field_size_limit(previous)
    return columns, records


def _jsonl(path: Path, text: str) -> tuple[list[str], list[dict[str, Any]]]:
    records: list[dict[str, Any]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TableError(f"{path}: line {number}: not valid JSON ({exc.msg})") from None
        except RecursionError:
            raise TableError(f"{path}: line {number}: JSON nested too deeply to read") from None
        if not isinstance(record, dict):
            raise TableError(f"{path}: line {number}: expected a JSON object, got {type(record).__name__}")
        for key, value in record.items():
            if isinstance(value, str) and (problem := unicode_problem(value)):
                raise TableError(f"{path}: line {number}, field {key!r}: {problem}")
        records.append(record)
    return list(dict.fromkeys(key for record in records for key in record)), records


def _parquet(path: Path) -> tuple[list[str], list[dict[str, Any]]]:
    try:
        import pyarrow.parquet as pq
    except ModuleNotFoundError:
        raise TableError(f"{path}: reading Parquet needs pyarrow (pip install pyarrow)") from None
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several unrelated types for a bad file
        raise TableError(f"{path}: not a readable Parquet file ({exc})") from None
    return table.column_names, table.to_pylist()


def read_table(path: Path) -> tuple[list[str], list[dict[str, Any]]]:
    """The column names and the rows of a CSV, JSONL or Parquet file, every value kept as written."""
    if not path.exists():
        raise TableError(f"data file not found: {path}")
    if path.is_dir():
        raise TableError(f"{path} is a directory; data.path must name a file")
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise TableError(f"{path}: unsupported file type {path.suffix!r}; use one of {', '.join(FORMATS)}")
    if kind == "Parquet":
        return _parquet(path)
    text = _decode(path)
    if not text.strip():
        raise TableError(f"{path}: the file is empty")
    return _csv(path, text) if kind == "CSV" else _jsonl(path, text)


def require_columns(columns: Sequence[str], source: object, wanted: dict[str, str | None]) -> None:
    """Each of ``wanted`` (name -> the setting that names it, if any) is one of ``columns``."""
    for column, setting in wanted.items():
        if column not in columns:
            named = f" ({setting})" if setting else ""
            # repr: a stray space or an invisible character in a header shows.
            available = ", ".join(map(repr, columns)) or "none"
            raise TableError(f"{source}: column {column!r} not found{named}; columns are: {available}")


def read_messages(
    path: Path, text_column: str, label_column: str | None = None
) -> tuple[list[str], list[str] | None]:
    """The texts (and labels, as strings) of a table of messages to route, every text non-empty."""
    columns, records = read_table(path)
    require_columns(columns, path, dict.fromkeys(filter(None, (text_column, label_column))))
    texts = [record.get(text_column) for record in records]
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str) or not t.strip()]
    if bad:
        raise TableError(f"{path}: {rows_phrase(bad)}, column {text_column!r}: empty or not text")
    if not texts:
        raise TableError(f"{path}: no messages")
    labels = [str(record.get(label_column)) for record in records] if label_column else None
    return texts, labels
