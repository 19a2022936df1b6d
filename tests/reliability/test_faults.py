"""Faults the service and the bundle writer survive: a slow cloud, a bundle write that fails.

(A cloud service killed and brought back, with its circuit breaker, is in tests/test_server.py.)
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx
import pytest

from edgeroute.bundle import ROUTER, BundleError, load_bundle, sha256, write_bundle
from edgeroute.cloud import CircuitBreaker
from tests.services import CloudService, edge_service


def test_a_slow_cloud_gets_the_edge_answer_within_the_time_budget(escalating_bundle, tmp_path, tiny_prepared):
    cloud = CloudService(load_bundle(escalating_bundle).router().cloud)
    cloud.delay_s = 5.0  # the edge gives up on it after 1 s (tests.services.edge_service)
    breaker = CircuitBreaker(failure_threshold=3)
    edge, audit = edge_service(escalating_bundle, tmp_path, cloud.url, breaker, "limits.timeout_s=3.0")
    texts = tiny_prepared[1].frame("test")["text"].head(4).tolist()
    try:
        began = time.perf_counter()
        slow = httpx.post(f"{edge.url}/v1/classify", json={"texts": texts}, timeout=30)
        elapsed = time.perf_counter() - began
        assert slow.status_code == 200 and elapsed < 3.0
        results = slow.json()["results"]
        assert {(r["route"], r["reason"]) for r in results} == {("edge", "cloud_error")}
        assert "edgeroute_cloud_errors_total 4.0" in httpx.get(f"{edge.url}/metrics").text

        cloud.delay_s = 0.0
        fast = httpx.post(f"{edge.url}/v1/classify", json={"texts": texts}, timeout=30).json()["results"]
        assert {(r["route"], r["reason"]) for r in fast} == {("cloud", "low_confidence")}
    finally:
        edge.stop()
        audit.close()
        cloud.stop()


def _tree(root: Path) -> dict[str, str]:
    """Every path under ``root``, hidden ones included, with each file's sha256."""
    return {str(p.relative_to(root)): sha256(p) if p.is_file() else "dir" for p in root.rglob("*")}


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda path: None, "No such file or directory"),
        (lambda path: path.mkdir(), "Is a directory"),
        (os.mkfifo, "is a named pipe"),
    ],
    ids=["missing", "a directory", "a named pipe"],
)
def test_a_bundle_write_that_fails_leaves_no_partial_bundle_and_the_others_as_they_were(
    tmp_path, tiny_bundle, make, message
):
    bundle = load_bundle(tiny_bundle)
    files = {name: tiny_bundle / name for name in bundle.manifest["files"]}
    bundles = tmp_path / "bundles"
    manifest = {"labels": bundle.labels, "max_length": 64, "metrics": {}, "lineage": {}}
    existing = write_bundle(bundles / "existing", files, **manifest)
    before = _tree(bundles)
    # router.json is copied last (files go in name order): the models are in the staging
    # directory by the time its copy fails.
    unreadable = tmp_path / "router.json"
    make(unreadable)
    with pytest.raises(BundleError, match=rf"new: cannot copy router\.json from {unreadable}: .*{message}"):
        write_bundle(bundles / "new", files | {ROUTER: unreadable}, **manifest)
    assert _tree(bundles) == before  # no bundle, no staging directory, the other bundle untouched
    assert load_bundle(existing).manifest["files"] == bundle.manifest["files"]
