"""The data stage: loading, the bad-input catalogue, de-duplication, the split and its digest."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from tasks.data import (
    SPLITS,
    DataValidationError,
    deduplicate,
    digest_splits,
    prepare_dataset,
    read_table,
)
from tasks.support.config import load_config
from tests.conftest import SHARED_DATA

BANKING77 = SHARED_DATA / "banking77" / "train.csv"


def _config(tmp_path: Path, *overrides: str):
    return load_config("tiny", [f"work_dir={tmp_path / 'work'}", *overrides])


def _rows(n_per_class: int = 6, labels=("good", "bad")) -> list[dict]:
    return [
        {"text": f"message number {i} about {label}", "label": label}
        for label in labels
        for i in range(n_per_class)
    ]


def _csv(tmp_path: Path, rows: list[dict], name: str = "data.csv") -> Path:
    path = tmp_path / name
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def _jsonl(tmp_path: Path, lines: list[str], name: str = "data.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _prepare(tmp_path: Path, path: Path, *overrides: str):
    return prepare_dataset(_config(tmp_path, f"data.path={path}", *overrides))


# --- loading ---------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_each_format_loads_the_same_rows(tmp_path, suffix):
    frame = pd.DataFrame(_rows(labels=("refund", "delivery", "login")))
    path = tmp_path / f"data{suffix}"
    if suffix == ".csv":
        frame.to_csv(path, index=False)
    elif suffix == ".jsonl":
        frame.to_json(path, orient="records", lines=True)
    else:
        frame.to_parquet(path)
    prepared, splits = _prepare(tmp_path, path)
    assert prepared.labels == ["delivery", "login", "refund"]
    assert sum(prepared.split_counts.values()) == 18
    assert sorted(pd.concat(splits.values())["text"]) == sorted(frame["text"])


def test_custom_columns_and_integer_labels(tmp_path):
    path = _jsonl(tmp_path, [json.dumps({"body": f"text {i}", "intent": i % 3}) for i in range(15)])
    prepared, _ = _prepare(tmp_path, path, "data.text_column=body", "data.label_column=intent")
    assert prepared.labels == ["0", "1", "2"]


def test_banking77_loads_with_its_label_column(tmp_path):
    prepared, splits = _prepare(tmp_path, BANKING77, "data.label_column=category")
    assert len(prepared.labels) == 77
    assert prepared.rows_read == 10003
    for name in SPLITS:
        assert set(splits[name]["label"]) == set(prepared.labels), name


# --- the bad-input catalogue: each names what is wrong and writes nothing ----------------------


def _bad_bytes(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes(b"text,label\nfine,a\nfine too,b\ncaf\xe9 au lait,a\n")
    return path


def _many_empty(tmp_path):
    return _csv(tmp_path, [{"text": "", "label": "a"}] * 7 + _rows())


CASES = {
    "missing file": (lambda p: p / "nope.csv", [], r"data file not found: .*nope\.csv"),
    "directory": (lambda p: p, [], r"is a directory; data\.path must name a file"),
    "unsupported type": (
        lambda p: _write(p / "data.txt", "text,label\n"),
        [],
        r"unsupported file type '\.txt'; use one of \.csv, \.jsonl",
    ),
    "empty file": (lambda p: _write(p / "e.csv", "\n\n"), [], r"e\.csv: the file is empty"),
    "header only": (
        lambda p: _write(p / "h.csv", "text,label\n"),
        [],
        "no data rows under the header",
    ),
    "missing text column": (
        lambda p: _csv(p, _rows()),
        ["data.text_column=message"],
        r"column 'message' not found \(data\.text_column\); columns are: 'text', 'label'",
    ),
    "missing label column": (
        lambda p: BANKING77,
        [],
        r"train\.csv: column 'label' not found \(data\.label_column\); columns are: 'text', 'category'",
    ),
    "empty text": (
        lambda p: _csv(p, [*_rows(), {"text": "", "label": "good"}]),
        [],
        r"data\.csv: row 13, column 'text': empty text",
    ),
    "whitespace-only text": (
        lambda p: _csv(p, [{"text": "   ", "label": "good"}, *_rows()]),
        [],
        r"row 1, column 'text': empty text",
    ),
    "many empty texts": (
        _many_empty,
        [],
        r"rows 1, 2, 3, 4, 5 and 2 more, column 'text': empty text",
    ),
    "non-string text": (
        lambda p: _jsonl(p, ['{"text": "hello", "label": "a"}', '{"text": 42, "label": "b"}']),
        [],
        r"data\.jsonl: row 2, column 'text': text must be a string, got int 42",
    ),
    "missing label": (
        lambda p: _csv(p, [*_rows(), {"text": "orphan message", "label": ""}]),
        [],
        r"row 13, column 'label': missing label",
    ),
    "null label": (
        lambda p: _jsonl(p, ['{"text": "a", "label": "x"}', '{"text": "b", "label": null}']),
        [],
        r"row 2, column 'label': missing label",
    ),
    "label of the wrong type": (
        lambda p: _jsonl(p, ['{"text": "a", "label": {"name": "x"}}']),
        [],
        r"row 1, column 'label': a label must be a string or an integer, got dict",
    ),
    "label with a line break": (
        lambda p: _jsonl(
            p, ['{"text": "a", "label": "x"}', '{"text": "b", "label": "ok\\n| forged | row |"}']
        ),
        [],
        r"row 2, column 'label': the label 'ok\\n\| forged \| row \|' holds a control character",
    ),
    "single class": (
        lambda p: _csv(p, _rows(labels=("only",))),
        [],
        r"column 'label' holds a single class \('only'\); a classifier needs at least 2",
    ),
    "class too small": (
        lambda p: _csv(
            p,
            [
                *_rows(),
                {"text": "rare one", "label": "rare"},
                {"text": "rare two", "label": "rare"},
            ],
        ),
        [],
        r"class too small for the 4-way split, each class needs at least 4 distinct examples: 'rare' \(2\)",
    ),
    "class too small after de-duplication": (
        lambda p: _csv(
            p,
            [
                *_rows(),
                *[{"text": "Same  text", "label": "dup"}, {"text": "same text", "label": "dup"}] * 3,
            ],
        ),
        [],
        r"'dup' \(1\)",
    ),
    "undecodable bytes": (_bad_bytes, [], r"latin1\.csv: line 4, byte \d+: not valid UTF-8"),
    "text too long (reject)": (
        lambda p: _csv(p, [*_rows(), {"text": "x" * 50, "label": "good"}]),
        ["data.max_chars=40", "data.on_too_long=reject"],
        r"row 13, column 'text': text longer than data\.max_chars=40 \(set data\.on_too_long=truncate",
    ),
    "malformed JSONL": (
        lambda p: _jsonl(
            p,
            ['{"text": "a", "label": "x"}', '{"text": "b", "label": '],
        ),
        [],
        r"data\.jsonl: line 2: not valid JSON",
    ),
    "JSONL line not an object": (
        lambda p: _jsonl(p, ['{"text": "a", "label": "x"}', '["b", "y"]']),
        [],
        r"line 2: expected a JSON object, got list",
    ),
    "malformed CSV": (
        lambda p: _write(p / "bad.csv", "text,label\nhello,a\nhello,b,extra\n"),
        [],
        r"bad\.csv: malformed CSV \(.*Expected 2 fields in line 3, saw 3",
    ),
    "corrupt Parquet": (
        lambda p: _write(p / "broken.parquet", "not parquet at all"),
        [],
        r"broken\.parquet: not a readable Parquet file",
    ),
}


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_named_and_nothing_is_written(tmp_path, case):
    make, overrides, message = CASES[case]
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    path = make(inputs)
    with pytest.raises(DataValidationError, match=message):
        _prepare(tmp_path, path, *overrides)
    assert not (tmp_path / "work").exists()


# --- cleaning, splitting, writing --------------------------------------------------------------


def test_long_texts_are_truncated_and_counted(tmp_path):
    rows = [*_rows(), {"text": "y" * 60, "label": "good"}, {"text": "z" * 70, "label": "bad"}]
    prepared, splits = _prepare(tmp_path, _csv(tmp_path, rows), "data.max_chars=40")
    assert prepared.truncated == 2
    assert max(len(t) for s in splits.values() for t in s["text"]) == 40


def test_duplicates_fold_case_and_spacing_and_report_conflicts():
    frame = pd.DataFrame(
        {
            "text": ["Refund please", "refund   please", "REFUND PLEASE", "Thanks"],
            "label": ["a", "a", "b", "c"],
        }
    )
    unique, removed, conflicting = deduplicate(frame)
    assert list(unique["text"]) == ["Refund please", "Thanks"]
    assert (removed, conflicting) == (2, 1)


def test_split_is_stratified_disjoint_and_complete(tmp_path):
    prepared, splits = prepare_dataset(_config(tmp_path, "data.n_samples=1000"))
    texts = [set(splits[name]["text"]) for name in SPLITS]
    assert sum(len(t) for t in texts) == len(set().union(*texts))
    total = sum(prepared.split_counts.values())
    assert total == 1000 - prepared.duplicates_removed
    assert abs(prepared.split_counts["train"] / total - 0.7) < 0.01
    for name in SPLITS:
        share = splits[name]["label"].value_counts(normalize=True)
        overall = pd.Series(prepared.class_counts) / total
        assert (share - overall).abs().max() < 0.03, name


def test_same_config_same_digest_other_seed_other_digest(tmp_path):
    first, _ = prepare_dataset(_config(tmp_path))
    again, _ = prepare_dataset(_config(tmp_path))
    other, _ = prepare_dataset(_config(tmp_path, "seed=1"))
    assert first.digest == again.digest != other.digest
    assert first.directory == again.directory != other.directory


def test_split_files_are_written_with_their_data_card(tmp_path):
    prepared, _ = prepare_dataset(_config(tmp_path))
    assert prepared.directory.name == prepared.digest[:16]
    reread = {name: pd.read_parquet(prepared.path(name)) for name in SPLITS}
    assert digest_splits(reread) == prepared.digest
    assert {"text", "label", "topic", "difficulty"} <= set(reread["train"].columns)
    card = json.loads((prepared.directory / "data.json").read_text())
    assert card["digest"] == prepared.digest
    assert card["labels"] == ["negative", "neutral", "positive"]
    assert card["config"]["n_samples"] == 600
    leftovers = [p.name for p in prepared.directory.parent.iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_an_existing_split_is_reused_not_rewritten(tmp_path):
    prepared, _ = prepare_dataset(_config(tmp_path))
    before = {p.name: p.stat().st_mtime_ns for p in prepared.directory.iterdir()}
    prepare_dataset(_config(tmp_path))
    assert {p.name: p.stat().st_mtime_ns for p in prepared.directory.iterdir()} == before


def test_read_table_keeps_values_as_written(tmp_path):
    path = _write(tmp_path / "d.csv", "text,label\nNA,1\nnull,02\n")
    frame = read_table(path)
    assert frame.to_dict("list") == {"text": ["NA", "null"], "label": ["1", "02"]}


# --- labelled by the cloud tier (data.label_with_cloud) ----------------------------------------


def _llm_overrides(llm, *more: str) -> list[str]:
    return [
        "data.label_with_cloud=true", "data.labels=[negative, neutral, positive]", "cloud.backend=openai",
        f"cloud.url={llm.url}", "cloud.model=stand-in-7b", "cloud.max_retries=0", *more,
    ]  # fmt: skip


def test_rows_without_a_label_are_labelled_by_the_cloud_and_its_bad_answers_dropped(tmp_path):
    from tests.services import OpenAIStandIn, keyword_label

    texts = [f"I want a refund for order {i}" for i in range(8)] + [f"thanks a lot, {i}" for i in range(8)]
    texts += [f"where is my parcel {i}" for i in range(8)] + [
        f"my parcel {i} is lost, no answer" for i in range(3)
    ]
    rows = [{"text": t, "label": "neutral" if t.startswith("where") else None} for t in texts]
    rows += [{"text": f"account 44112299 question {i}", "label": None} for i in range(8)]
    llm = OpenAIStandIn()
    llm.label_of = lambda text: "pwned" if "lost" in text else keyword_label(text)
    try:
        prepared, splits = _prepare(tmp_path, _csv(tmp_path, rows), *_llm_overrides(llm))
    finally:
        llm.stop()
    sent = llm.texts()
    assert len(sent) == 8 + 8 + 3 + 8  # the rows without a label only
    assert all("44112299" not in text for text in sent) and any("<" in text for text in sent)  # masked
    assert prepared.cloud_labels == {
        "labelled": 24, "dropped": 3, "backend": "openai", "model": "stand-in-7b", "url": llm.url
    }  # fmt: skip
    assert prepared.rows_read == len(rows) - 3 and prepared.labels == ["negative", "neutral", "positive"]
    labelled = pd.concat(splits.values())
    assert not labelled["text"].str.contains("lost").any()
    assert set(labelled.loc[labelled["text"].str.startswith("thanks"), "label"]) == {"positive"}
    card = json.loads((prepared.directory / "data.json").read_text())
    assert card["cloud_labels"]["labelled"] == 24


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["data.label_with_cloud=true", "data.labels=[a, b]"],
            "data.label_with_cloud needs a remote cloud tier",
        ),
        (["data.label_with_cloud=true", "cloud.url=http://127.0.0.1:9"], "needs data.labels"),
    ],
    ids=["no-cloud", "no-labels"],
)
def test_labelling_by_the_cloud_needs_a_cloud_and_labels(tmp_path, overrides, message):
    path = _csv(tmp_path, [{"text": f"message {i}"} for i in range(40)])
    with pytest.raises(DataValidationError, match=message):
        _prepare(tmp_path, path, *overrides)
    assert not (tmp_path / "work").exists()
