"""The edge classifier: length buckets, its own padding, one text or many alike."""

from __future__ import annotations

import numpy as np
import pytest

from edgeroute.bundle import CLOUD_MODEL, EDGE_MODEL, load_bundle
from edgeroute.model import length_buckets


@pytest.mark.parametrize("batch_size", [1, 4, 32])
def test_length_buckets_cover_every_text_once_shortest_first(batch_size):
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 120, size=200).tolist()
    buckets = length_buckets(lengths, batch_size, call_cost=64)
    flat = np.concatenate(buckets)
    assert sorted(flat.tolist()) == list(range(200))
    assert all(len(b) <= batch_size for b in buckets)
    assert [lengths[i] for i in flat] == sorted(lengths)


def test_a_bucket_stops_where_padding_would_cost_more_than_a_call():
    # Ten texts of 10 tokens then one of 20: padding ten rows by 10 tokens (100) > 64: new bucket.
    assert [b.tolist() for b in length_buckets([10] * 10 + [20], 32, call_cost=64)] == [list(range(10)), [10]]
    # Five rows by 10 tokens (50) <= 64: the long text joins them.
    assert [b.tolist() for b in length_buckets([10] * 5 + [20], 32, call_cost=64)] == [list(range(6))]


def test_batched_logits_match_one_at_a_time(tiny_bundle, tiny_prepared):
    bundle = load_bundle(tiny_bundle)
    texts = [*tiny_prepared[1].frame("test")["text"].tolist()[:40], "ok", "x " * 300]
    fp32 = bundle.classifier(CLOUD_MODEL, batch_size=4)
    batched, tokens = fp32.logits_and_tokens(texts)
    np.testing.assert_allclose(batched, np.concatenate([fp32.logits([t]) for t in texts]), atol=1e-4)
    assert tokens[-2][0] == "[CLS]" and tokens[-2][-1] == "[SEP]" and "[PAD]" not in tokens[-2]
    assert len(tokens[-1]) == bundle.manifest["max_length"]  # truncated, not padded
    # Static INT8: fixed scales, so a text's integer products are the same in any batch; only the
    # float ops between them could round differently with the batch's shape.
    int8 = bundle.classifier(EDGE_MODEL, batch_size=4)
    batched, alone = int8.logits(texts), np.concatenate([int8.logits([t]) for t in texts])
    np.testing.assert_allclose(batched, alone, rtol=0, atol=1e-5)
