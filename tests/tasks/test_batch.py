"""Batch routing's plain functions: partitions of row and text, decisions with no text, the summary."""

from __future__ import annotations

import pandas as pd
import pytest

from edgeroute.bundle import load_bundle
from edgeroute.tables import TableError
from tasks.batch import read_decisions, route_partition, summary_of, write_partitions


def test_partitions_keep_row_order_and_decisions_carry_no_text(tmp_path, tiny_bundle):
    texts = [f"order {i} arrived late and support never replied" for i in range(7)]
    pd.DataFrame({"message": texts}).to_csv(tmp_path / "store.csv", index=False)
    parts = write_partitions(tmp_path / "store.csv", "message", 3, tmp_path / "parts")
    assert [len(pd.read_parquet(p)) for p in parts] == [3, 3, 1]
    assert pd.concat(map(pd.read_parquet, parts))["text"].tolist() == texts

    routed = [route_partition(tiny_bundle, p, tmp_path / "out" / p.name) for p in reversed(parts)]
    decisions = pd.concat(map(pd.read_parquet, routed))
    assert "text" not in decisions.columns and sorted(decisions["row"]) == list(range(7))
    expected = load_bundle(tiny_bundle).router().route(texts)
    assert [d.label for d in read_decisions(routed)] == [d.label for d in expected]

    summary = summary_of(routed, load_bundle(tiny_bundle).router_settings().costs, per_month=1000)
    assert summary["queries"] == 7 and summary["per_month"] == 1000


def test_an_empty_text_stops_partitioning_naming_the_row(tmp_path):
    (tmp_path / "store.csv").write_text("message\nhello\n\n   \n")
    with pytest.raises(TableError, match=r"store\.csv: row 2, column 'message': empty or not text"):
        write_partitions(tmp_path / "store.csv", "message", 10, tmp_path / "parts")
    assert not (tmp_path / "parts").exists()
