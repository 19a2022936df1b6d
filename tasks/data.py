"""Data stage: generate or load messages, validate, de-duplicate, split, write with a digest."""

from __future__ import annotations

import hashlib
import json
import math
import unicodedata
from pathlib import Path

import numpy as np
import pandas as pd
from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact

from edgeroute import audit, tables, trails
from edgeroute.cloud import remote_cloud
from edgeroute.files import atomic_directory
from edgeroute.privacy import mask
from edgeroute.router import chunks
from edgeroute.tables import TableError, rows_phrase
from tasks.support import synthetic, tracking
from tasks.support.config import DataConfig, PipelineConfig, ProductionConfig
from tasks.support.dataset import PRODUCTION_HOLDOUT, SPLITS, PreparedData

# Input data that cannot be used, with the file, row and column at fault: the runtime's error
# for a table it cannot read, so that both sides answer bad input alike.
DataValidationError = TableError


def read_table(path: Path) -> pd.DataFrame:
    """Read a CSV, JSONL or Parquet file as it is, every value kept as written."""
    columns, records = tables.read_table(path)
    return pd.DataFrame.from_records(records, columns=columns)


def _is_missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value)) or value == ""


def validate(frame: pd.DataFrame, config: DataConfig, source: str) -> tuple[pd.DataFrame, int]:
    """Check columns and values; return ``text``/``label`` rows and how many texts were truncated."""
    text_col, label_col = config.text_column, config.label_column
    tables.require_columns(
        frame.columns, source, {text_col: "data.text_column", label_col: "data.label_column"}
    )
    if frame.empty:
        raise DataValidationError(f"{source}: no data rows under the header")
    texts, labels = frame[text_col], frame[label_col]

    not_str = [i for i, v in enumerate(texts) if not _is_missing(v) and not isinstance(v, str)]
    if not_str:
        raise DataValidationError(
            f"{source}: {rows_phrase(not_str)}, column {text_col!r}: text must be a string, "
            f"got {type(texts.iloc[not_str[0]]).__name__} {texts.iloc[not_str[0]]!r}"
        )
    empty = [i for i, v in enumerate(texts) if _is_missing(v) or not v.strip()]
    if empty:
        raise DataValidationError(f"{source}: {rows_phrase(empty)}, column {text_col!r}: empty text")
    no_label = [i for i, v in enumerate(labels) if _is_missing(v) or not str(v).strip()]
    if no_label:
        raise DataValidationError(f"{source}: {rows_phrase(no_label)}, column {label_col!r}: missing label")
    bad_label = [i for i, v in enumerate(labels) if not isinstance(v, str | int | np.integer)]
    if bad_label:
        raise DataValidationError(
            f"{source}: {rows_phrase(bad_label)}, column {label_col!r}: a label must be a string or an "
            f"integer, got {type(labels.iloc[bad_label[0]]).__name__}"
        )
    # A label is shown in model cards, reports and the CLI's tab-separated output: no line break,
    # tab or other control character may split or forge a line there.
    controlled = [
        i for i, v in enumerate(labels) if any(unicodedata.category(c) == "Cc" for c in str(v).strip())
    ]
    if controlled:
        raise DataValidationError(
            f"{source}: {rows_phrase(controlled)}, column {label_col!r}: the label "
            f"{str(labels.iloc[controlled[0]]).strip()!r} holds a control character (a line break, tab, ...)"
        )

    texts = texts.map(lambda t: unicodedata.normalize("NFC", t.strip()))
    too_long = [i for i, t in enumerate(texts) if len(t) > config.max_chars]
    if too_long and config.on_too_long == "reject":
        raise DataValidationError(
            f"{source}: {rows_phrase(too_long)}, column {text_col!r}: text longer than data.max_chars="
            f"{config.max_chars} (set data.on_too_long=truncate to cut such texts instead)"
        )
    texts = texts.str.slice(0, config.max_chars)
    clean = pd.DataFrame({"text": texts, "label": labels.map(lambda v: str(v).strip())})
    for extra in ("topic", "difficulty"):
        if extra in frame.columns and extra not in (text_col, label_col):
            clean[extra] = frame[extra].astype(str)
    return clean.reset_index(drop=True), len(too_long)


def text_key(texts: pd.Series) -> pd.Series:
    """What makes two texts the same: case and spacing folded."""
    return texts.str.casefold().str.split().str.join(" ")


def deduplicate(frame: pd.DataFrame) -> tuple[pd.DataFrame, int, int]:
    """Drop repeated texts (case and spacing folded), keeping the first; count label conflicts."""
    key = text_key(frame["text"])
    conflicting = int((frame.groupby(key)["label"].nunique() > 1).sum())
    keep = ~key.duplicated()
    return frame[keep].reset_index(drop=True), int((~keep).sum()), conflicting


def check_classes(frame: pd.DataFrame, source: str, n_splits: int) -> dict[str, int]:
    """At least two classes, each large enough for a sample in every split."""
    counts = frame["label"].value_counts().sort_index()
    if len(counts) < 2:
        only = counts.index[0] if len(counts) else "none"
        raise DataValidationError(
            f"{source}: column 'label' holds a single class ({only!r}); a classifier needs at least 2"
        )
    small = counts[counts < n_splits]
    if len(small):
        names = ", ".join(f"{label!r} ({count})" for label, count in small.items())
        raise DataValidationError(
            f"{source}: class too small for the {n_splits}-way split, each class needs at least "
            f"{n_splits} distinct examples: {names}"
        )
    return {str(k): int(v) for k, v in counts.items()}


def stratified_split(frame: pd.DataFrame, config: DataConfig, seed: int) -> dict[str, pd.DataFrame]:
    """Split every class by the configured fractions, each split getting at least one example."""
    rng = np.random.default_rng(seed)
    fractions = config.splits.as_dict()
    parts: dict[str, list[int]] = {name: [] for name in SPLITS}
    for _, group in frame.groupby("label", sort=True):
        index = rng.permutation(group.index.to_numpy())
        sizes = {name: max(1, round(len(index) * fractions[name])) for name in SPLITS[1:]}
        sizes["train"] = len(index) - sum(sizes.values())
        start = 0
        for name in SPLITS:
            parts[name].extend(index[start : start + sizes[name]].tolist())
            start += sizes[name]
    return {
        name: frame.loc[rng.permutation(np.array(rows, dtype=int))].reset_index(drop=True)
        for name, rows in parts.items()
    }


def digest_splits(splits: dict[str, pd.DataFrame]) -> str:
    """A sha256 of the split content: same rows in the same splits, same digest."""
    sha = hashlib.sha256()
    for name, split in splits.items():
        for text, label in zip(split["text"], split["label"], strict=True):
            sha.update(f"{name}\t{label}\t{text}\n".encode())
    return sha.hexdigest()


def label_with_cloud(raw: pd.DataFrame, config: PipelineConfig, source: str) -> tuple[pd.DataFrame, dict]:
    """``raw`` with its rows without a label labelled by the cloud tier, which sees each text
    masked, answers from ``data.labels`` and is cached; rows it gave no label of the set are
    dropped and counted. Returns the rows and the report for the data card."""
    data, cloud = config.data, config.cloud
    if cloud.backend == "local":
        raise DataValidationError(
            "data.label_with_cloud needs a remote cloud tier: set cloud.backend (openai or edgeroute) "
            "and cloud.url, and cloud.model for openai"
        )
    if not data.labels:
        raise DataValidationError("data.label_with_cloud needs data.labels: the labels the cloud may answer")
    tables.require_columns(raw.columns, source, {data.text_column: "data.text_column"})
    frame = raw.copy()
    if data.label_column not in frame.columns:
        frame[data.label_column] = None
    todo = [
        i
        for i, (text, label) in enumerate(zip(frame[data.text_column], frame[data.label_column], strict=True))
        if _is_missing(label) and isinstance(text, str) and text.strip()
    ]
    backend = remote_cloud(config.cloud_cached, list(data.labels))
    answers = []
    try:
        for chunk in chunks([mask(frame[data.text_column].iloc[i]) for i in todo]):
            answers += backend.classify(chunk)
    except RuntimeError as exc:  # every text of a call failed: the cloud is down, nothing to keep
        raise DataValidationError(f"data.label_with_cloud: the cloud tier failed: {exc}") from None
    dropped = [i for i, answer in zip(todo, answers, strict=True) if answer is None]
    for i, answer in zip(todo, answers, strict=True):
        if answer is not None:
            frame.iat[i, frame.columns.get_loc(data.label_column)] = answer.label
    report = {
        "labelled": len(todo) - len(dropped),
        "dropped": len(dropped),
        "backend": cloud.backend,
        "model": cloud.model,
        "url": cloud.url,
    }
    return frame.drop(index=frame.index[dropped]).reset_index(drop=True), report


def production_rows(config: ProductionConfig, labels: list[str]) -> tuple[pd.DataFrame, dict[str, int]]:
    """The labelled rows of the production trail (text masked, label, source, time) and the
    counts of those it could not use: no text kept, no label but the edge's, a label outside
    ``labels``."""
    since = config.since.timestamp() if config.since is not None else None
    try:
        rows = trails.training_rows(config.trail, since)
    except audit.AuditError as exc:
        raise DataValidationError(f"data.production.trail: {exc}") from None
    counts = {"decisions": len(rows), "no_text": 0, "edge_only": 0, "unknown_label": 0}
    kept = []
    for row in rows:
        answers = {"feedback": row["true_label"], "cloud": row["cloud_label"]}
        source = next((name for name in config.labels if answers[name] is not None), None)
        if row["masked_text"] is None:
            counts["no_text"] += 1
        elif source is None:
            counts["edge_only"] += 1
        elif answers[source] not in labels:
            counts["unknown_label"] += 1
        else:
            kept.append(
                {"text": row["masked_text"], "label": answers[source], "source": source, "time": row["time"]}
            )
    return pd.DataFrame(kept, columns=["text", "label", "source", "time"]), counts


def merge_production(
    splits: dict[str, pd.DataFrame], config: ProductionConfig, fractions: dict[str, float], seed: int
) -> tuple[dict[str, pd.DataFrame], dict]:
    """``splits`` with the production rows shared among train, validation and calibration in
    the proportions ``fractions`` gives them (so the router is calibrated on production's texts
    too), and the latest feedback-labelled ones as `PRODUCTION_HOLDOUT`; none whose text is in
    the base set (masked as production texts are), the fixed test split above all. Returns them
    and the counts: of each source, of each split, and of what was left out and why."""
    labels = sorted(set(splits["train"]["label"]))
    rows, counts = production_rows(config, labels)
    base = pd.concat([splits[name] for name in SPLITS])
    in_test = text_key(rows["text"]).isin(set(text_key(splits["test"]["text"].map(mask))))
    in_base = text_key(rows["text"]).isin(set(text_key(base["text"].map(mask))))
    counts["in_test_split"] = int(in_test.sum())
    counts["in_base_set"] = int((in_base & ~in_test).sum())
    # One row a text: the label of the highest precedence, then the latest.
    rank = rows["source"].map({name: i for i, name in enumerate(config.labels)})
    rows = rows[~in_base].assign(rank=rank).sort_values(["rank", "time"], ascending=[True, False])
    repeated = text_key(rows["text"]).duplicated()
    counts["repeated"] = int(repeated.sum())
    rows = rows[~repeated].sort_values("time", kind="stable")
    feedback = rows[rows["source"] == "feedback"]
    holdout = feedback.tail(math.ceil(len(feedback) * config.holdout_share))
    learnt = rows.drop(index=holdout.index)
    counts |= {"holdout": len(holdout)} | {
        name: int((learnt["source"] == name).sum()) for name in ("feedback", "cloud")
    }
    if len(learnt) < config.min_rows:
        details = ", ".join(f"{k} {v}" for k, v in counts.items())
        raise DataValidationError(
            f"data.production.trail {config.shown}: {len(learnt)} rows to learn from, fewer than "
            f"data.production.min_rows={config.min_rows} ({details})"
        )
    rng = np.random.default_rng(seed)
    learnt = learnt.iloc[rng.permutation(len(learnt))]
    shares = {name: fractions[name] for name in SPLITS if name != "test"}
    cuts = np.round(np.cumsum([0, *shares.values()]) / sum(shares.values()) * len(learnt)).astype(int)
    merged = dict(splits)
    for name, start, end in zip(shares, cuts[:-1], cuts[1:], strict=True):
        part = learnt.iloc[start:end][["text", "label"]]
        counts[f"to_{name}"] = len(part)
        joined = pd.concat([splits[name], part], ignore_index=True)
        merged[name] = joined.iloc[rng.permutation(len(joined))].reset_index(drop=True)
    if len(holdout):
        merged[PRODUCTION_HOLDOUT] = holdout[["text", "label"]].reset_index(drop=True)
    return merged, counts


def load_source(config: DataConfig, seed: int) -> tuple[pd.DataFrame, str]:
    """The raw rows and a name for where they came from."""
    if config.path is None:
        rows = synthetic.generate(config.n_samples, seed, config.label_noise)
        return pd.DataFrame(rows), f"synthetic(n_samples={config.n_samples}, seed={seed})"
    return read_table(config.path), str(config.path)


def write_splits(splits: dict[str, pd.DataFrame], destination: Path, card: dict) -> None:
    """Write the splits and their data card atomically: a complete directory or none."""
    try:
        with atomic_directory(destination) as staging:
            for name, split in splits.items():
                split.to_parquet(staging / f"{name}.parquet", index=False)
            (staging / "data.json").write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    except OSError:
        if not (destination / "data.json").is_file():
            raise
        # Otherwise a concurrent run wrote the same content first.


def prepare_dataset(config: PipelineConfig) -> tuple[PreparedData, dict[str, pd.DataFrame]]:
    """Generate or load, validate, de-duplicate and split; write it under ``work_dir/data/<digest>``."""
    data = config.data
    raw, source = load_source(data, config.seed)
    cloud_labels: dict = {}
    if data.label_with_cloud:
        raw, cloud_labels = label_with_cloud(raw, config, source)
    clean, truncated = validate(raw, data, source)
    unique, removed, conflicting = deduplicate(clean)
    class_counts = check_classes(unique, source, len(SPLITS))
    splits = stratified_split(unique, data, config.seed)
    production: dict = {}
    if data.production is not None:
        splits, production = merge_production(splits, data.production, data.splits.as_dict(), config.seed)
        source += f" + production({data.production.shown})"
    digest = digest_splits(splits)
    prepared = PreparedData(
        directory=(config.work_dir / "data" / digest[:16]).resolve(),
        digest=digest,
        labels=sorted(class_counts),
        source=source,
        rows_read=len(raw),
        duplicates_removed=removed,
        conflicting_duplicates=conflicting,
        truncated=truncated,
        class_counts=class_counts,
        split_counts={name: len(split) for name, split in splits.items()},
        cloud_labels=cloud_labels,
        production=production,
    )
    if not (prepared.directory / "data.json").is_file():
        card = prepared.to_json() | {"config": data.model_dump(mode="json"), "seed": config.seed}
        write_splits(splits, prepared.directory, card)
    return prepared, splits


@task(name="prepare-data")
def prepare_data(config: PipelineConfig) -> PreparedData:
    """Prefect task: the data stage, logged to MLflow as a nested run with its datasets."""
    logger = get_run_logger()
    prepared, splits = prepare_dataset(config)
    logger.info(
        "data: %d rows from %s, %d duplicates removed, %d truncated -> %s",
        prepared.rows_read,
        prepared.source,
        prepared.duplicates_removed,
        prepared.truncated,
        prepared.directory,
    )
    if prepared.cloud_labels:
        report = prepared.cloud_labels
        logger.info(
            "data: %d rows labelled by the cloud tier (%s %s), %d dropped: no label of data.labels",
            report["labelled"], report["backend"], report["model"], report["dropped"],
        )  # fmt: skip
    with tracking.stage("data", config.data.model_dump(mode="json") | {"seed": config.seed}) as run_id:
        tracking.log_metrics(
            run_id,
            {
                "rows_read": prepared.rows_read,
                "duplicates_removed": prepared.duplicates_removed,
                "conflicting_duplicates": prepared.conflicting_duplicates,
                "truncated": prepared.truncated,
                "num_classes": len(prepared.labels),
            }
            | {
                f"cloud_labels_{k}": prepared.cloud_labels[k]
                for k in ("labelled", "dropped")
                if prepared.cloud_labels
            }
            | {f"production_{k}": v for k, v in prepared.production.items()}
            | {f"{name}_rows": count for name, count in prepared.split_counts.items()},
        )
        tracking.set_tags(run_id, {"data.digest": prepared.digest, "data.source": prepared.source})
        tracking.log_class_counts(run_id, prepared.class_counts)
        tracking.log_datasets(run_id, splits, source=str(prepared.directory), digest=prepared.digest)
        tracking.log_artifact(run_id, prepared.directory / "data.json")
    create_table_artifact(
        key="data-summary",
        table=[{"split": name, "rows": count} for name, count in prepared.split_counts.items()],
        description=f"Data {prepared.digest[:16]} from {prepared.source}: "
        f"{len(prepared.labels)} classes, {prepared.duplicates_removed} duplicates removed.",
    )
    return prepared


def unlabelled_texts(config: PipelineConfig) -> list[str]:
    """The non-empty texts of ``dapt.unlabelled_path`` (none when unset), in file order."""
    path = config.dapt.unlabelled_path
    if path is None:
        return []
    frame = read_table(path)
    column = config.data.text_column
    tables.require_columns(frame.columns, path, {column: "data.text_column"})
    return [t.strip() for t in frame[column] if isinstance(t, str) and t.strip()]
