"""Markdown for the gate and behaviour reports, model cards, run summaries and artifacts: one
table helper, and a code span that shows any value as written.

Labels, versions and examples come from users' data, so neither may end a cell or a row of a
table, nor be read as markdown or HTML: every table cell has its pipes escaped and its line
breaks made spaces, and such values are shown in code spans, where neither is interpreted.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

EMPTY = "—"  # a cell with nothing to show


def table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A GitHub-flavoured table of ``rows`` under ``header``; None shows as an em dash."""

    def cell(value: object) -> str:
        return EMPTY if value is None else " ".join(str(value).split()).replace("|", "\\|")

    lines = [header, ["---"] * len(header), *rows]
    return "\n".join(
        "|" + "|".join(f" {text} " if (text := cell(v)) else " " for v in line) + "|" for line in lines
    )


def code(value: object) -> str:
    """``value`` as an inline code span on one line: fenced with one backtick more than its
    longest run of them, so no backtick, asterisk, link or tag in it is read as markup."""
    text = " ".join(str(value).split())
    fence = "`" * (max(map(len, re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"
