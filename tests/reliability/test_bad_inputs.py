"""The bad-input catalogue, across the pipeline, the command line and the service.

Every bad input is refused with an error that names the file, line, row, column or field, a
non-zero exit or a 4xx, and leaves what it could have written untouched: no work directory, no
registered model version, no audit row. Valid Unicode, however odd, gets a normal decision.
(The data stage's own catalogue, `tests/tasks/test_data.py`, covers more files at unit level.)
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from mlflow import MlflowClient

from edgeroute.bundle import MANIFEST, ROUTER, derive_bundle, load_bundle
from edgeroute.config import load_serve_config
from edgeroute.router import ESCALATION_REASONS, OPTIMAL_EDGE
from flows.training import training_pipeline
from tasks.data import DataValidationError
from tests.services import edge_service

BIN = Path(sys.executable).parent
DEEP = 100_000  # nesting far past Python's recursion limit
LIMITS = ("limits.max_text_chars=200", "limits.max_batch=8")  # the service's
BODY_LIMIT = load_serve_config(None, list(LIMITS)).limits.max_body_bytes
HTTP_DEEP = 5_000  # past the recursion limit too, in a body the service reads (within its limit)


def _rows(per_class: int = 6) -> str:
    lines = [
        f"message number {i} about {label},{label}" for label in ("good", "bad") for i in range(per_class)
    ]
    return "\n".join(lines) + "\n"


def _write(path: Path, content: str | bytes) -> Path:
    if isinstance(content, str):
        content = content.encode("utf-8")
    path.write_bytes(content)
    return path


# --- the training pipeline: bad data files, through the flow with real Prefect and MLflow ------

DATA = {
    "JSON nested too deeply": (
        lambda p: _write(
            p / "deep.jsonl", '{"text": "hi", "label": "a"}\n{"text": ' + "[" * DEEP + "]" * DEEP + "}\n"
        ),
        [],
        r"deep\.jsonl: line 2: JSON nested too deeply to read",
    ),
    "lone surrogate in JSONL": (
        lambda p: _write(p / "s.jsonl", '{"text": "caf\\ud800 au lait", "label": "a"}\n'),
        [],
        r"s\.jsonl: line 1, field 'text': not valid Unicode: a lone surrogate at character 3",
    ),
    "UTF-16 file": (
        lambda p: _write(p / "utf16.csv", ("text,label\n" + _rows()).encode("utf-16")),
        [],
        r"utf16\.csv: line 1, byte 0: not valid UTF-8 .*re-save the file as UTF-8",
    ),
    "binary file named .csv": (
        lambda p: _write(p / "image.csv", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"),
        [],
        r"image\.csv: line 1, byte 0: not valid UTF-8",
    ),
    "header with stray spaces": (
        lambda p: _write(p / "spaces.csv", " text ,label\n" + _rows()),
        [],
        r"column 'text' not found \(data\.text_column\); columns are: ' text ', 'label'",
    ),
    "invisible character in a header": (
        lambda p: _write(p / "zw.csv", "text,\u200blabel\n" + _rows()),
        [],
        r"column 'label' not found \(data\.label_column\); columns are: 'text', '\\u200blabel'",
    ),
    "a 1 MB text, rejected": (
        lambda p: _write(p / "huge.csv", "text,label\n" + _rows() + "x" * 1_000_000 + ",good\n"),
        ["data.on_too_long=reject"],
        r"huge\.csv: row 13, column 'text': text longer than data\.max_chars=2000",
    ),
    "text that is a nested object": (
        lambda p: _write(
            p / "obj.jsonl", '{"text": "fine", "label": "a"}\n{"text": {"a": [1]}, "label": "b"}\n'
        ),
        [],
        r"obj\.jsonl: row 2, column 'text': text must be a string, got dict",
    ),
    "class of 3, one short of the 4-way split": (
        lambda p: _write(
            p / "tiny.csv", "text,label\n" + _rows() + "rare 1,rare\nrare 2,rare\nrare 3,rare\n"
        ),
        [],
        r"tiny\.csv: class too small .*'rare' \(3\)",
    ),
}


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """One MLflow store for the module's flow runs: its registry must stay empty."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        yield MlflowClient(uri)


@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.parametrize("case", DATA)
def test_bad_data_fails_the_flow_naming_the_fault_and_writes_nothing(case, tmp_path, registry):
    make, overrides, message = DATA[case]
    work = tmp_path / "work"
    state = training_pipeline(
        preset="tiny",
        overrides=[f"work_dir={work}", *overrides],
        data_path=str(make(tmp_path)),
        return_state=True,
    )
    assert state.is_failed()
    with pytest.raises(DataValidationError, match=message):
        state.result()
    assert not work.exists()
    assert registry.search_model_versions() == []
    (run,) = registry.search_runs(
        [registry.get_experiment_by_name("edgeroute").experiment_id],
        f"tags.`prefect.flow_run_id` = '{state.state_details.flow_run_id}'",
    )
    assert run.info.status == "FAILED"


# --- presets and overrides: `edgeroute train` exits 2 before anything starts -------------------

CONFIGS = {
    "preset nested too deeply": (
        "seed: " + "[" * 20_000 + "]" * 20_000 + "\n",
        [],
        "is not valid YAML (nested too deeply)",
    ),
    "preset not UTF-8": (
        b"name: caf\xe9\n",
        [],
        "bad.yaml: byte 9: not valid UTF-8 (invalid continuation byte)",
    ),
    "preset indented with a tab": (
        "data:\n\tn_samples: 500\n",
        [],
        "bad.yaml is not valid YAML (while scanning",
    ),
    "a word where a number goes": (
        "classifier:\n  epochs: three\n",
        [],
        "classifier.epochs: Input should be a valid integer",
    ),
    "split fractions that do not add up": (
        "name: x\n",
        ["data.splits.train=0.9"],
        "data.splits: Value error, split fractions must sum to 1, got 1.2",
    ),
    "an override naming no field": ("name: x\n", ["classifier.epoch=3"], "classifier.epoch: unknown field"),
    "an override nested too deeply": (
        "name: x\n",
        ["seed=" + "[" * 20_000],
        "value is not valid YAML (nested too deeply)",
    ),
}


def _cli(args: list, cwd: Path, **kwargs) -> subprocess.CompletedProcess:
    env = os.environ | {"MLFLOW_TRACKING_URI": f"sqlite:///{cwd / 'mlflow.db'}"}
    return subprocess.run(
        [str(BIN / "edgeroute"), *args], cwd=cwd, env=env, capture_output=True, timeout=120, **kwargs
    )


def _error(done: subprocess.CompletedProcess) -> str:
    stderr = done.stderr.decode() if isinstance(done.stderr, bytes) else done.stderr
    assert "Traceback" not in stderr, stderr[-2000:]
    return stderr


@pytest.mark.parametrize("case", CONFIGS)
def test_a_bad_preset_or_override_exits_2_naming_the_field(case, tmp_path):
    content, overrides, message = CONFIGS[case]
    preset = _write(tmp_path / "bad.yaml", content)
    done = _cli(
        ["train", "--preset", str(preset), *(a for o in overrides for a in ("--set", o))], tmp_path, text=True
    )
    assert done.returncode == 2
    assert "error: " in done.stderr and message in _error(done)
    assert [p.name for p in tmp_path.iterdir()] == ["bad.yaml"]  # no work/, no MLflow store


# --- bundles and the command line ----------------------------------------------------------------


@pytest.fixture(scope="module")
def damaged_bundles(tiny_bundle, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("damaged")
    settings = json.loads((tiny_bundle / ROUTER).read_text())
    router_json = _write(root / "router.json", json.dumps(settings | {"min_confidence": 2.0}))
    bad_router = derive_bundle(
        load_bundle(tiny_bundle), root / "bad-router", replace={ROUTER: router_json}, metrics={}, lineage={}
    )
    no_files = root / "no-files"
    no_files.mkdir()
    _write(no_files / MANIFEST, json.dumps({"format_version": 1, "labels": ["a", "b"]}))
    return {"bad-router": bad_router, "no-files": no_files}


CLI = {
    "router.json out of range": (
        lambda b, p: ["classify", "--bundle", str(b["bad-router"]), "hello"],
        2,
        r"router\.json: invalid router settings: min_confidence must be within \[0, 1\] \(got 2\.0\)",
    ),
    "manifest without its file list": (
        lambda b, p: ["classify", "--bundle", str(b["no-files"]), "hello"],
        2,
        r"manifest\.json: no max_length, files in the manifest",
    ),
    "a file of texts that is not UTF-8": (
        lambda b, p: [
            "classify",
            "--bundle",
            str(b["good"]),
            "--file",
            str(_write(p / "t.txt", b"fine\ncaf\xe9\n")),
        ],
        2,
        r"t\.txt: line 2: not valid UTF-8 \(invalid continuation byte\)",
    ),
    "an argument that is not valid Unicode": (
        lambda b, p: ["classify", "--bundle", str(b["good"]), "fine", b"caf\xe9"],
        2,
        r"argument 2: not valid Unicode: a lone surrogate at character 3",
    ),
    "an empty argument": (
        lambda b, p: ["classify", "--bundle", str(b["good"]), "fine", "  "],
        2,
        r"argument 2: empty text",
    ),
    "messages to simulate nested too deeply": (
        lambda b, p: [
            "simulate",
            "--bundle",
            str(b["good"]),
            "--data",
            str(DATA["JSON nested too deeply"][0](p)),
        ],
        1,
        r"deep\.jsonl: line 2: JSON nested too deeply to read",
    ),
}


@pytest.mark.parametrize("case", CLI)
def test_bad_bundles_and_texts_on_the_command_line_exit_non_zero_naming_the_fault(
    case, damaged_bundles, tiny_bundle, tmp_path
):
    args, code, message = CLI[case]
    done = _cli(args(damaged_bundles | {"good": tiny_bundle}, tmp_path), tmp_path)
    assert done.returncode == code and done.stdout == b""
    assert re.search(message, _error(done))


# --- the service: a 4xx naming the field, no decision recorded ----------------------------------

JSON = {"content-type": "application/json"}
SERVICE = {
    "malformed JSON": ("/v1/classify", b'{"text": ', 422, "JSON decode error (Expecting value)"),
    "a JSON array, not an object": ("/v1/classify", b'["where is my parcel"]', 422, "valid dictionary"),
    "JSON nested too deeply": (
        "/v1/classify",
        b'{"texts": ' + b"[" * HTTP_DEEP + b"]" * HTTP_DEEP + b"}",
        400,
        "body: not readable as JSON (maximum recursion depth exceeded",
    ),
    "a body that is not UTF-8": (
        "/v1/classify",
        '{"text": "café"}'.encode("latin-1"),
        400,
        "body: not readable as JSON ('utf-8' codec can't decode byte 0xe9",
    ),
    "a lone surrogate in the text": (
        "/v1/classify",
        b'{"text": "caf\\ud800"}',
        422,
        "text: not valid Unicode: a lone surrogate at character 3",
    ),
    "a lone surrogate in the batch": (
        "/v1/classify",
        b'{"texts": ["fine", "\\udfff"]}',
        422,
        "texts[1]: not valid Unicode: a lone surrogate at character 0",
    ),
    "NaN for a text": (
        "/v1/classify",
        b'{"text": NaN}',
        422,
        "'loc': ['body', 'text'], 'msg': 'Input should be a valid string'",
    ),
    "null in a batch": ("/v1/classify", b'{"texts": ["fine", null]}', 422, "'loc': ['body', 'texts', 1]"),
    "a batch of 200,000 texts": (
        "/v1/classify",
        json.dumps({"texts": ["where is my parcel"] * 200_000}).encode(),
        413,
        f"body: 4400011 bytes; at most {BODY_LIMIT}",  # refused before it is read
    ),
    "a 10 MB text": (
        "/v1/classify",
        json.dumps({"text": "x" * 10_000_000}).encode(),
        413,
        f"body: 10000012 bytes; at most {BODY_LIMIT}",
    ),
    "a batch of 9 texts": (
        "/v1/classify",
        json.dumps({"texts": ["where is my parcel"] * 9}).encode(),
        413,
        "texts: 9 texts in one request; at most 8",
    ),
    "zero-width characters past the limit": (
        "/v1/classify",
        json.dumps({"text": "\u200b" * 201}).encode(),
        413,
        "text: 201 characters; at most 200",
    ),
    "feedback with a lone surrogate": (
        "/v1/feedback",
        b'{"request_id": "\\ud800", "label": "positive"}',
        422,
        "'loc': ['body', 'request_id'], 'msg': 'Input should be a valid string, unable to parse raw data",
    ),
    "feedback with a number for the id": (
        "/v1/feedback",
        b'{"request_id": 7, "label": "positive"}',
        422,
        "'loc': ['body', 'request_id']",
    ),
}


@pytest.fixture(scope="module")
def service(tiny_bundle, tmp_path_factory):
    running, audit = edge_service(
        tiny_bundle,
        tmp_path_factory.mktemp("service"),
        None,
        None,
        *LIMITS,
    )
    yield running, audit
    running.stop()
    audit.close()


def _recorded(service) -> tuple[int, int]:
    """Decisions in the audit trail and in the monitor's window."""
    running, audit = service
    with sqlite3.connect(audit.path) as db:
        rows = db.execute("SELECT COUNT(*) FROM decisions").fetchone()[0]
    return rows, httpx.get(f"{running.url}/v1/health").json()["metrics"]["requests"]


@pytest.mark.parametrize("case", SERVICE)
def test_a_bad_request_gets_a_4xx_naming_the_field_and_records_nothing(case, service):
    path, body, status, message = SERVICE[case]
    before = _recorded(service)
    response = httpx.post(f"{service[0].url}{path}", content=body, headers=JSON, timeout=60)
    assert response.status_code == status
    assert message in str(response.json()["detail"])
    assert _recorded(service) == before


VALID_UNICODE = {
    "Arabic, right to left": "أين طلبي؟ لم يصل بعد",
    "Hebrew with digits": "ההזמנה שלי 12345 לא הגיעה",
    "right-to-left override": "\u202eplease refund my order\u202c",
    "zero-width joiner and non-joiner in words": "re\u200dfund my or\u200cder please",
    "zero-width space and a byte order mark": "\ufeffwhere\u200bis my parcel",
    "emoji sequences": "👨‍👩‍👧‍👦 loved it 🎉🔥 👍🏽 🇬🇧",
    "combining marks": "t\u0335h\u0334a\u0336n\u0337k\u0338s\u0321 a l\u0300\u0301\u0302ot",
    "decomposed accents (NFD)": "cafe\u0301 order was late, re\u0301sume\u0301 attached",
    "CJK": "我的包裹在哪里？ 配達が遅れています",
    "a NUL character": "where is\u0000my parcel",
    "only emoji": "😡😡😡",
}


def test_valid_unicode_gets_a_decision_with_a_reason(service, tiny_prepared):
    running, _ = service
    before, _ = _recorded(service)
    labels = set(tiny_prepared[1].labels)
    reasons = {OPTIMAL_EDGE, *ESCALATION_REASONS}
    texts = list(VALID_UNICODE.values())
    batch = httpx.post(f"{running.url}/v1/classify", json={"texts": texts[:8]}).json()["results"]
    singles = [httpx.post(f"{running.url}/v1/classify", json={"text": t}) for t in texts[8:]]
    assert {r.status_code for r in singles} == {200}
    results = batch + [r.json()["results"][0] for r in singles]
    assert len(results) == len(VALID_UNICODE)
    for name, result in zip(VALID_UNICODE, results, strict=True):
        assert result["label"] in labels and result["reason"] in reasons and result["cost"] > 0, name
    assert _recorded(service)[0] == before + len(VALID_UNICODE)
