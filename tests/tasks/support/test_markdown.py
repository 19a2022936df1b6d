"""Markdown that users' labels and texts cannot break: tables keep their shape, code spans show
values as written, and the reports built with them hold a hostile label as text."""

from __future__ import annotations

import re

from tasks.behaviour import Outcome, report
from tasks.support.markdown import code, table

HOSTILE = "<img src=x onerror=alert(1)>|**bold**`tick`\n| forged | row |"


def _cells(line: str) -> int:
    """The cells of a table row: pipes that are not escaped, less one."""
    return len(re.findall(r"(?<!\\)\|", line)) - 1


def test_a_table_keeps_its_shape_whatever_its_cells_hold():
    lines = table(["label", "rows"], [[HOSTILE, 3], ["plain", None]]).splitlines()
    assert len(lines) == 4 and {_cells(line) for line in lines} == {2}
    assert lines[1] == "| --- | --- |" and lines[3] == "| plain | — |"


def test_a_code_span_shows_any_value_as_written_on_one_line():
    assert code("positive") == "`positive`"
    assert code("a`b") == "``a`b``" and code("`edge`") == "`` `edge` ``"
    span = code(HOSTILE)
    assert "\n" not in span and span.startswith("``") and "<img src=x onerror=alert(1)>" in span


def test_the_behaviour_report_holds_a_hostile_label_as_text():
    outcomes = {f"mft.{HOSTILE}": {m: Outcome(4, 1, []) for m in ("edge", "cloud", "system")}}
    lines = report(outcomes, []).splitlines()
    rows = [line for line in lines if line.startswith("|")]
    assert len(rows) == 3 and {_cells(line) for line in rows} == {4}
    assert "onerror" in rows[2] and re.search(r"`+ ?mft\.<img", rows[2]), "the label sits in a code span"
    (failed,) = [line for line in lines if "onerror" in line and line.startswith("- ")]
    assert failed.startswith("- ``mft.<img"), "and so it does among the failed cases"
