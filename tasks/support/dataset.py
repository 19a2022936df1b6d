"""The prepared data every stage after the data stage reads: its splits on disk and its data card."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

SPLITS = ("train", "validation", "calibration", "test")
# The latest feedback-labelled production rows (data.production), never trained on.
PRODUCTION_HOLDOUT = "production_holdout"


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
    # Rows labelled by the cloud tier (data.label_with_cloud): how many, how many of its answers
    # were dropped, by which backend and model. Empty when the data came labelled.
    cloud_labels: dict[str, Any] = field(default_factory=dict)
    # Rows learnt from production (data.production): per source, and those left out and why.
    # Empty without. Its holdout, when there is one, is the split "production_holdout".
    production: dict[str, int] = field(default_factory=dict)

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
        fields = {name: card[name] for name in cls.__dataclass_fields__ if name in card}
        return cls(**fields | {"directory": Path(card["directory"])})
