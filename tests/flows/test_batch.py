"""Batch routing on a Dask LocalCluster with two workers: the same decisions as in-process."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from edgeroute.bundle import load_bundle
from flows.batch import route_messages
from tasks.data import DataValidationError

pytestmark = pytest.mark.usefixtures("prefect_harness")


def test_partitions_routed_on_dask_match_the_router_in_process(tmp_path, tiny_bundle, tiny_prepared):
    frame = pd.concat([tiny_prepared[1].frame(s) for s in ("train", "test")]).head(250)
    frame.rename(columns={"text": "message"}).to_csv(tmp_path / "store.csv", index=False)

    summary = route_messages(
        data_path=str(tmp_path / "store.csv"),
        output_dir=str(tmp_path / "routed"),
        model=str(tiny_bundle),
        text_column="message",
        rows_per_partition=100,
        n_workers=2,
    )
    parts = sorted((tmp_path / "routed" / "decisions").glob("part-*.parquet"))
    assert [p.name for p in parts] == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    routed = pd.concat(pd.read_parquet(p) for p in parts)
    assert routed["row"].tolist() == list(range(250))
    assert "text" not in routed.columns and "message" not in routed.columns
    assert not (tmp_path / "routed" / "partitions").exists()  # the texts do not outlive the run

    expected = load_bundle(tiny_bundle).router().route(frame["text"].tolist())
    assert routed["label"].tolist() == [d.label for d in expected]
    assert routed["reason"].tolist() == [d.reason for d in expected]
    assert summary["queries"] == 250
    assert summary["edge_share"] == pytest.approx(sum(d.route == "edge" for d in expected) / 250)
    assert json.loads((tmp_path / "routed" / "summary.json").read_text()) == summary


def test_partitions_escalate_to_an_llm_given_in_the_settings(tmp_path, tiny_bundle):
    from tests.services import OpenAIStandIn

    pd.DataFrame({"text": ["I want a refund", "thanks a lot", "where is my parcel"] * 4}).to_csv(
        tmp_path / "store.csv", index=False
    )
    llm = OpenAIStandIn()
    try:
        summary = route_messages(
            data_path=str(tmp_path / "store.csv"),
            output_dir=str(tmp_path / "routed"),
            model=str(tiny_bundle),
            rows_per_partition=5,
            settings=["cloud.backend=openai", f"cloud.url={llm.url}", "cloud.model=m", "min_confidence=1.0"],
        )
    finally:
        llm.stop()
    routed = pd.concat(
        pd.read_parquet(p) for p in sorted((tmp_path / "routed" / "decisions").glob("*.parquet"))
    )
    assert routed["route"].tolist() == ["cloud"] * 12 and len(llm.requests) == 12
    assert routed["label"].tolist() == ["negative", "positive", "neutral"] * 4
    assert summary["edge_share"] == 0.0


def test_a_missing_text_column_fails_before_anything_is_routed(tmp_path, tiny_bundle):
    pd.DataFrame({"body": ["hello"]}).to_csv(tmp_path / "store.csv", index=False)
    with pytest.raises(DataValidationError, match="column 'text' not found; columns are: 'body'"):
        route_messages(
            data_path=str(tmp_path / "store.csv"), output_dir=str(tmp_path / "out"), model=str(tiny_bundle)
        )
    assert not (tmp_path / "out" / "decisions").exists()
