"""The docs a user copies from: the configuration reference is the models' own, and every YAML
block the README and docs/ show loads through the real validators."""

from __future__ import annotations

import re

import pytest
import yaml

from edgeroute.config import ServeConfig, validate
from tasks.support.config import PipelineConfig
from tasks.support.reference import REFERENCE, reference, undescribed
from tests.conftest import ROOT

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("**/*.md"))]
BLOCK = re.compile(r"^```yaml\n(.*?)^```", re.MULTILINE | re.DOTALL)


def yaml_blocks() -> list[tuple[str, str]]:
    """Each ```yaml block of the docs, named by its file and line."""
    blocks = []
    for path in DOCS:
        text = path.read_text(encoding="utf-8")
        for m in BLOCK.finditer(text):
            blocks.append((f"{path.relative_to(ROOT)}:{text[: m.start()].count(chr(10)) + 1}", m.group(1)))
    return blocks


def test_every_field_has_a_description_and_the_reference_is_the_generated_one():
    assert undescribed(ServeConfig) == [] and undescribed(PipelineConfig) == []
    assert REFERENCE.read_text(encoding="utf-8") == reference(), (
        "docs/configuration.md is out of date: run .venv/bin/python -m tasks.support.reference"
    )


def test_the_docs_show_yaml_blocks():
    assert len(yaml_blocks()) >= 2


@pytest.mark.parametrize(("where", "block"), yaml_blocks(), ids=[where for where, _ in yaml_blocks()])
def test_a_yaml_block_of_the_docs_loads_through_the_validators(where, block):
    # A block is a serve.yaml when it says so on its first line, else a preset's (pipeline) config.
    model = ServeConfig if block.lstrip().startswith("# serve.yaml") else PipelineConfig
    validate(model, yaml.safe_load(block) or {}, where)
