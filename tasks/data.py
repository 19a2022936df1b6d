"""Data stage: generate or load messages, validate, de-duplicate, split, write with a digest."""

from __future__ import annotations

import hashlib
import json
import unicodedata
from dataclasses import asdict, dataclass
from io import StringIO
from pathlib import Path

import numpy as np
import pandas as pd
from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact

from edgeroute.config import DataConfig, PipelineConfig
from edgeroute.files import atomic_directory
from edgeroute.router import unicode_problem
from tasks import synthetic, tracking

SPLITS = ("train", "validation", "calibration", "test")
FORMATS = {".csv": "CSV", ".jsonl": "JSONL", ".json": "JSONL", ".parquet": "Parquet"}
_SHOWN = 5  # offending rows named in an error message


class DataValidationError(ValueError):
    """Input data that cannot be used, with the file, row and column at fault."""


@dataclass(frozen=True)
class PreparedData:
    """Where the split lives and what it holds; the input of every later stage."""

    directory: Path
    digest: str
    labels: list[str]
    source: str
    rows_read: int
    duplicates_removed: int
    conflicting_duplicates: int
    truncated: int
    class_counts: dict[str, int]
    split_counts: dict[str, int]

    def path(self, split: str) -> Path:
        return self.directory / f"{split}.parquet"

    def frame(self, split: str) -> pd.DataFrame:
        return pd.read_parquet(self.path(split))

    def to_json(self) -> dict:
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}

    @classmethod
    def load(cls, directory: Path) -> PreparedData:
        """Read a prepared split back from its data card."""
        card = json.loads((directory / "data.json").read_text(encoding="utf-8"))
        fields = {name: card[name] for name in cls.__dataclass_fields__}
        return cls(**fields | {"directory": Path(card["directory"])})


def _rows(index: list[int] | pd.Index) -> str:
    """Name offending rows 1-based, as a person counts data rows under the header."""
    shown = ", ".join(str(i + 1) for i in list(index)[:_SHOWN])
    more = len(index) - _SHOWN
    return f"row {shown}" if len(index) == 1 else f"rows {shown}" + (f" and {more} more" if more > 0 else "")


def _decode(path: Path) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataValidationError(
            f"{path}: line {line}, byte {exc.start}: not valid UTF-8 ({exc.reason}); "
            "re-save the file as UTF-8"
        ) from None


def read_table(path: Path) -> pd.DataFrame:
    """Read a CSV, JSONL or Parquet file as it is, every value kept as written."""
    if not path.exists():
        raise DataValidationError(f"data file not found: {path}")
    if path.is_dir():
        raise DataValidationError(f"{path} is a directory; data.path must name a file")
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise DataValidationError(
            f"{path}: unsupported file type {path.suffix!r}; use one of {', '.join(FORMATS)}"
        )
    if kind == "Parquet":
        try:
            return pd.read_parquet(path)
        except Exception as exc:  # pyarrow raises several unrelated types for a bad file
            raise DataValidationError(f"{path}: not a readable Parquet file ({exc})") from None
    text = _decode(path)
    if not text.strip():
        raise DataValidationError(f"{path}: the file is empty")
    if kind == "CSV":
        try:
            return pd.read_csv(StringIO(text), dtype=str, keep_default_na=False)
        except pd.errors.ParserError as exc:
            raise DataValidationError(f"{path}: malformed CSV ({exc})") from None
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataValidationError(f"{path}: line {number}: not valid JSON ({exc.msg})") from None
        except RecursionError:
            raise DataValidationError(f"{path}: line {number}: JSON nested too deeply to read") from None
        if not isinstance(record, dict):
            raise DataValidationError(
                f"{path}: line {number}: expected a JSON object, got {type(record).__name__}"
            )
        for key, value in record.items():
            if isinstance(value, str) and (problem := unicode_problem(value)):
                raise DataValidationError(f"{path}: line {number}, field {key!r}: {problem}")
        records.append(record)
    return pd.DataFrame.from_records(records)


def require_columns(frame: pd.DataFrame, source: object, columns: dict[str, str | None]) -> None:
    """Each of ``columns`` (name -> the setting that names it, if any) is in ``frame``."""
    for column, setting in columns.items():
        if column not in frame.columns:
            named = f" ({setting})" if setting else ""
            # repr: a stray space or an invisible character in a header shows.
            available = ", ".join(map(repr, frame.columns)) or "none"
            raise DataValidationError(
                f"{source}: column {column!r} not found{named}; columns are: {available}"
            )


def _is_missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value)) or value == ""


def validate(frame: pd.DataFrame, config: DataConfig, source: str) -> tuple[pd.DataFrame, int]:
    """Check columns and values; return ``text``/``label`` rows and how many texts were truncated."""
    text_col, label_col = config.text_column, config.label_column
    require_columns(frame, source, {text_col: "data.text_column", label_col: "data.label_column"})
    if frame.empty:
        raise DataValidationError(f"{source}: no data rows under the header")
    texts, labels = frame[text_col], frame[label_col]

    not_str = [i for i, v in enumerate(texts) if not _is_missing(v) and not isinstance(v, str)]
    if not_str:
        raise DataValidationError(
            f"{source}: {_rows(not_str)}, column {text_col!r}: text must be a string, "
            f"got {type(texts.iloc[not_str[0]]).__name__} {texts.iloc[not_str[0]]!r}"
        )
    empty = [i for i, v in enumerate(texts) if _is_missing(v) or not v.strip()]
    if empty:
        raise DataValidationError(f"{source}: {_rows(empty)}, column {text_col!r}: empty text")
    no_label = [i for i, v in enumerate(labels) if _is_missing(v) or not str(v).strip()]
    if no_label:
        raise DataValidationError(f"{source}: {_rows(no_label)}, column {label_col!r}: missing label")
    bad_label = [i for i, v in enumerate(labels) if not isinstance(v, str | int | np.integer)]
    if bad_label:
        raise DataValidationError(
            f"{source}: {_rows(bad_label)}, column {label_col!r}: a label must be a string or an "
            f"integer, got {type(labels.iloc[bad_label[0]]).__name__}"
        )

    texts = texts.map(lambda t: unicodedata.normalize("NFC", t.strip()))
    too_long = [i for i, t in enumerate(texts) if len(t) > config.max_chars]
    if too_long and config.on_too_long == "reject":
        raise DataValidationError(
            f"{source}: {_rows(too_long)}, column {text_col!r}: text longer than data.max_chars="
            f"{config.max_chars} (set data.on_too_long=truncate to cut such texts instead)"
        )
    texts = texts.str.slice(0, config.max_chars)
    clean = pd.DataFrame({"text": texts, "label": labels.map(lambda v: str(v).strip())})
    for extra in ("topic", "difficulty"):
        if extra in frame.columns and extra not in (text_col, label_col):
            clean[extra] = frame[extra].astype(str)
    return clean.reset_index(drop=True), len(too_long)


def deduplicate(frame: pd.DataFrame) -> tuple[pd.DataFrame, int, int]:
    """Drop repeated texts (case and spacing folded), keeping the first; count label conflicts."""
    key = frame["text"].str.casefold().str.split().str.join(" ")
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
    for name in SPLITS:
        for text, label in zip(splits[name]["text"], splits[name]["label"], strict=True):
            sha.update(f"{name}\t{label}\t{text}\n".encode())
    return sha.hexdigest()


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
    clean, truncated = validate(raw, data, source)
    unique, removed, conflicting = deduplicate(clean)
    class_counts = check_classes(unique, source, len(SPLITS))
    splits = stratified_split(unique, data, config.seed)
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
    )
    if not (prepared.directory / "data.json").is_file():
        card = prepared.to_json() | {"config": data.model_dump(mode="json"), "seed": config.seed}
        write_splits(splits, prepared.directory, card)
    return prepared, splits


@task(name="prepare-data")
def prepare_data(config: PipelineConfig, parent_run_id: str) -> PreparedData:
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
    with tracking.stage_run(parent_run_id, "data") as run_id:
        tracking.log_params(run_id, config.data.model_dump(mode="json") | {"seed": config.seed})
        tracking.log_metrics(
            run_id,
            {
                "rows_read": prepared.rows_read,
                "duplicates_removed": prepared.duplicates_removed,
                "conflicting_duplicates": prepared.conflicting_duplicates,
                "truncated": prepared.truncated,
                "num_classes": len(prepared.labels),
            }
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
    require_columns(frame, path, {column: "data.text_column"})
    return [t.strip() for t in frame[column] if isinstance(t, str) and t.strip()]


def read_messages(path: Path, text_column: str, label_column: str | None = None) -> pd.DataFrame:
    """A table of messages to route: the text (and label) columns present, every text non-empty."""
    frame = read_table(path)
    require_columns(frame, path, dict.fromkeys(filter(None, (text_column, label_column))))
    bad = [i for i, t in enumerate(frame[text_column]) if not isinstance(t, str) or not t.strip()]
    if bad:
        raise DataValidationError(f"{path}: {_rows(bad)}, column {text_column!r}: empty or not text")
    if frame.empty:
        raise DataValidationError(f"{path}: no messages")
    return frame
