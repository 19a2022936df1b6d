"""The bundle: written whole with a manifest, verified on load, refused when altered."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from edgeroute.bundle import (
    CLOUD_MODEL,
    EDGE_MODEL,
    ROUTER,
    TOKENIZER,
    BundleError,
    derive_bundle,
    load_bundle,
    write_bundle,
)


@pytest.fixture
def bundle_dir(tmp_path, tiny_compressed, tiny_prepared):
    _, data = tiny_prepared
    int8, fp32 = tiny_compressed.variants["int8"], tiny_compressed.variants["fp32"]
    return write_bundle(
        tmp_path / "bundle",
        {EDGE_MODEL: int8.model, CLOUD_MODEL: fp32.model, TOKENIZER: int8.tokenizer},
        labels=data.labels,
        max_length=64,
        metrics={"edge": {"accuracy": 0.9}},
        lineage={"data_digest": data.digest},
    )


def test_a_bundle_loads_and_serves_both_tiers(bundle_dir, tiny_prepared):
    _, data = tiny_prepared
    bundle = load_bundle(bundle_dir)
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    assert set(manifest["files"]) == {EDGE_MODEL, CLOUD_MODEL, TOKENIZER}
    assert manifest["lineage"]["data_digest"] == data.digest
    texts = data.frame("test")["text"].tolist()[:20]
    edge, cloud = bundle.classifier(EDGE_MODEL), bundle.classifier(CLOUD_MODEL)
    probabilities = edge.predict_proba(texts)
    assert probabilities.shape == (20, 3)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, rtol=1e-5)
    assert set(cloud.predict(texts)) <= set(data.labels)


def test_a_tampered_file_is_refused(bundle_dir):
    model = bundle_dir / EDGE_MODEL
    raw = bytearray(model.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    model.write_bytes(bytes(raw))
    with pytest.raises(BundleError, match=r"edge/model\.onnx does not match its sha256 in the manifest"):
        load_bundle(bundle_dir)


def test_a_lazy_bundle_checks_each_file_when_first_read(bundle_dir, tmp_path):
    model = bundle_dir / CLOUD_MODEL
    raw = bytearray(model.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    model.write_bytes(bytes(raw))
    bundle = load_bundle(bundle_dir, lazy=True)
    bundle.classifier(EDGE_MODEL)  # intact: loads
    with pytest.raises(BundleError, match=r"cloud/model\.onnx does not match its sha256"):
        bundle.classifier(CLOUD_MODEL)
    with pytest.raises(BundleError, match=r"cloud/model\.onnx does not match its sha256"):
        derive_bundle(bundle, tmp_path / "derived", replace={}, metrics={}, lineage={})
    assert not (tmp_path / "derived").exists()


def test_a_model_swapped_after_its_check_is_never_the_one_loaded(bundle_dir):
    bundle = load_bundle(bundle_dir)  # every file hashed and found as the manifest says
    (bundle_dir / EDGE_MODEL).write_bytes((bundle_dir / CLOUD_MODEL).read_bytes())
    with pytest.raises(BundleError, match=r"edge/model\.onnx does not match its sha256"):
        bundle.classifier(EDGE_MODEL)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: (d / TOKENIZER).unlink(), r"tokenizer\.json is listed in the manifest but missing"),
        (lambda d: (d / "manifest.json").unlink(), r"not a bundle \(no manifest\.json\)"),
        (lambda d: (d / "manifest.json").write_text("{"), "manifest.json: not valid JSON"),
        (
            lambda d: (d / "manifest.json").write_text(json.dumps({"format_version": 99, "files": {}})),
            "format_version 99, this edgeroute reads 1",
        ),
    ],
)
def test_a_damaged_bundle_is_refused(bundle_dir, damage, message):
    damage(bundle_dir)
    with pytest.raises(BundleError, match=message):
        load_bundle(bundle_dir)


def test_a_bundle_is_never_overwritten(bundle_dir, tiny_compressed):
    before = (bundle_dir / "manifest.json").read_bytes()
    int8 = tiny_compressed.variants["int8"]
    with pytest.raises(BundleError, match="already exists; bundles are never overwritten"):
        write_bundle(
            bundle_dir, {EDGE_MODEL: int8.model, TOKENIZER: int8.tokenizer},
            labels=["a", "b"], max_length=8, metrics={}, lineage={},
        )  # fmt: skip
    assert (bundle_dir / "manifest.json").read_bytes() == before


def test_the_runtime_imports_no_training_stack(tiny_bundle):
    code = (
        "import importlib, pkgutil, sys, pathlib, edgeroute\n"
        "for m in pkgutil.iter_modules(edgeroute.__path__, 'edgeroute.'): importlib.import_module(m.name)\n"
        "from edgeroute.bundle import load_bundle\n"
        f"load_bundle(pathlib.Path({str(tiny_bundle)!r})).router().route(['where is my parcel'])\n"
        "heavy = {'torch', 'tensorflow', 'transformers', 'prefect', 'mlflow', 'pandas', 'sklearn'}\n"
        "print(sorted(heavy & set(sys.modules)))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_a_trimmed_edge_model_ships_the_cloud_tokenizer_beside_the_cloud_model(
    tmp_path, tiny_prepared, tiny_classifier, tiny_calibration
):
    from tasks.bundle import bundle_files
    from tasks.compress import compress
    from tasks.gate import GateDecision

    config, data = tiny_prepared
    corpus = [t for split in ("train", "validation", "calibration") for t in data.frame(split)["text"]]
    compressed = compress(
        tiny_classifier,
        corpus,
        config.compress.model_copy(update={"trim_vocabulary": True}),
        tmp_path / "c",
        calibration_texts=data.frame("calibration")["text"].tolist(),
        max_length=config.model.max_length,
    )
    decision = GateDecision(compressed.variants["int8"], compressed.recipe, {}, "")
    files = bundle_files(compressed, decision, tiny_calibration)
    assert set(files) == {EDGE_MODEL, CLOUD_MODEL, TOKENIZER, ROUTER, "cloud/tokenizer.json"}
    bundle = load_bundle(
        write_bundle(tmp_path / "b", files, labels=data.labels, max_length=64, metrics={}, lineage={})
    )
    cloud, edge = bundle.classifier(CLOUD_MODEL), bundle.classifier(EDGE_MODEL)
    assert cloud.tokenizer.get_vocab_size() > edge.tokenizer.get_vocab_size()
    texts = data.frame("test")["text"].tolist()
    agreement = np.mean(np.array(cloud.predict(texts)) == np.array(edge.predict(texts)))
    assert agreement > 0.9
