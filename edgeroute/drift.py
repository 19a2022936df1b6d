"""Input drift: a reference profile of what the model was trained on, and the population
stability index (PSI) of live traffic against it.

The profile is built at training time from the held-out validation messages routed by the edge
model (held out, so that the edge confidence is not inflated by fitting): for the text length,
the share of unfamiliar word pieces and the edge confidence, the reference's deciles as bin
edges and the share of messages in each bin; for the edge model's predicted label, each label's
share. The service bins its window the same way.

PSI, not a chi-square or Kolmogorov-Smirnov test: a test's p-value answers "is there any
difference", which at production volumes is "yes" for shifts too small to matter, and it moves
with the window's size; PSI measures how large the shift is, on a scale with the usual reading
(below 0.1 none, 0.1 to 0.25 moderate, above 0.25 major) whatever the traffic, and needs nothing
but numpy.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from edgeroute.router import Router

NUMERIC = ("length", "unfamiliar_share", "edge_confidence")
LABEL = "label"
FEATURES = (*NUMERIC, LABEL)
BINS = 10
SMOOTHING = 1e-4  # the least share a bin counts for: an empty bin would make PSI infinite


def _shares(counts: np.ndarray) -> list[float]:
    return (counts / max(int(counts.sum()), 1)).tolist()


def _bin(values: Sequence[float], edges: Sequence[float]) -> np.ndarray:
    return np.bincount(np.searchsorted(edges, values, side="right"), minlength=len(edges) + 1)


def psi(expected: Sequence[float], actual: Sequence[float]) -> float:
    """Σ (actual − expected) · ln(actual / expected) over the bins, shares floored at `SMOOTHING`."""
    e = np.maximum(np.asarray(expected, dtype=float), SMOOTHING)
    a = np.maximum(np.asarray(actual, dtype=float), SMOOTHING)
    return float(np.sum((a - e) * np.log(a / e)))


@dataclass(frozen=True)
class Profile:
    """Bin edges (numeric features) and the reference's share of each bin or label."""

    edges: dict[str, list[float]]
    shares: dict[str, list[float]]
    labels: list[str]
    samples: int

    @classmethod
    def build(
        cls, values: Mapping[str, Sequence[float]], predicted: Sequence[str], labels: Sequence[str]
    ) -> Profile:
        """The profile of reference ``values`` (a sequence per `NUMERIC` feature) and labels."""
        edges, shares = {}, {}
        for name in NUMERIC:
            column = np.asarray(values[name], dtype=float)
            inner = np.unique(np.quantile(column, np.linspace(0, 1, BINS + 1)[1:-1]))
            edges[name] = inner.tolist()
            shares[name] = _shares(_bin(column, inner))
        index = {label: i for i, label in enumerate(labels)}
        shares[LABEL] = _shares(np.bincount([index[p] for p in predicted], minlength=len(labels)))
        return cls(edges, shares, list(labels), len(predicted))

    def drift(self, values: Mapping[str, Sequence[float]], predicted: Sequence[str]) -> dict[str, float]:
        """PSI of each feature of a window against this profile."""
        result = {
            name: psi(self.shares[name], _shares(_bin(values[name], self.edges[name]))) for name in NUMERIC
        }
        index = {label: i for i, label in enumerate(self.labels)}
        counts = np.bincount([index[p] for p in predicted if p in index], minlength=len(self.labels))
        result[LABEL] = psi(self.shares[LABEL], _shares(counts))
        return result

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_dict(cls, values: Any) -> Profile:
        """A profile read back, refused with the field that is wrong."""
        if not isinstance(values, dict) or set(values) != {"edges", "shares", "labels", "samples"}:
            raise ValueError("a profile has exactly the fields edges, shares, labels and samples")
        edges, shares, labels = values["edges"], values["shares"], values["labels"]
        for name in NUMERIC:
            bins = edges.get(name) if isinstance(edges, dict) else None
            if not isinstance(bins, list) or not all(isinstance(x, int | float) for x in bins):
                raise ValueError(f"edges.{name} must be a list of numbers")
            if list(bins) != sorted(bins):
                raise ValueError(f"edges.{name} must be in increasing order")
        sizes = {name: len(edges[name]) + 1 for name in NUMERIC} | {LABEL: len(labels)}
        for name, size in sizes.items():
            row = shares.get(name) if isinstance(shares, dict) else None
            if (
                not isinstance(row, list)
                or len(row) != size
                or not all(isinstance(x, int | float) and 0 <= x <= 1 for x in row)
            ):
                raise ValueError(f"shares.{name} must be {size} shares from 0 to 1")
            if not math.isclose(sum(row), 1, abs_tol=1e-6):
                raise ValueError(f"shares.{name} must sum to 1")
        if type(values["samples"]) is not int or values["samples"] < 1:
            raise ValueError("samples must be a positive integer")
        return cls(edges, shares, labels, values["samples"])


def reference_profile(router: Router, texts: Sequence[str]) -> Profile:
    """The profile of ``texts`` as ``router``'s edge model sees them (`Profile.build`)."""
    from edgeroute.router import chunks

    values: dict[str, list[float]] = {name: [] for name in NUMERIC}
    predicted: list[str] = []
    for chunk in chunks(texts):
        features = router.features(chunk)
        values["length"] += [len(text) for text in chunk]
        values["unfamiliar_share"] += features.unfamiliar_share.tolist()
        values["edge_confidence"] += features.confidence.tolist()
        predicted += [router.labels[int(i)] for i in features.label]
    return Profile.build(values, predicted, router.labels)
