"""The configuration reference, generated from the pydantic models so that it cannot drift.

    .venv/bin/python -m tasks.support.reference [--check]

Writes ``docs/configuration.md``: every field of the pipeline config (`PipelineConfig`, the
presets and ``--set``) and of the serve config (`edgeroute.config.ServeConfig`, ``serve.yaml``),
with its dotted path, type, default and description; a section's text is its model's docstring.
``--check`` only says whether the file is up to date (exit 1 if not).
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
import types
import typing
from collections.abc import Iterator
from pathlib import Path

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from edgeroute.config import ServeConfig
from tasks.support.config import PipelineConfig
from tasks.support.markdown import code, table

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = ROOT / "docs" / "configuration.md"
CONFIGS = (
    (
        PipelineConfig,
        "The pipeline config",
        "a preset (`--preset`, `deployments/presets/*.yaml`) and `--set`",
    ),
    (ServeConfig, "The serve config", "`edgeroute serve --config serve.yaml` and `--set`"),
)


def section(annotation: object) -> type[BaseModel] | None:
    """The config model a field holds (alone or with None), else None: a leaf field."""
    options = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else (annotation,)
    models = [o for o in options if inspect.isclass(o) and issubclass(o, BaseModel)]
    return models[0] if models else None


def type_name(annotation: object) -> str:
    """A field's type as a user writes it in YAML."""
    text = str(annotation).replace("typing.", "").replace("pathlib.", "").replace("datetime.", "")
    return text.removeprefix("<class '").removesuffix("'>").replace("NoneType", "None")


def default(field: FieldInfo) -> str:
    """A field's default as YAML shows it: a string as it is, anything else as JSON."""
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True)
    if isinstance(value, Path):
        value = str(value)
    return code(
        value if isinstance(value, str) else json.dumps(list(value) if isinstance(value, tuple) else value)
    )


def fields(
    model: type[BaseModel], prefix: str = ""
) -> Iterator[tuple[str, type[BaseModel] | None, FieldInfo]]:
    """Every field of ``model``, depth first, by dotted path: (path, its section model or None, field)."""
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        held = section(field.annotation)
        yield path, held, field
        if held is not None:
            yield from fields(held, f"{path}.")


def undescribed(model: type[BaseModel]) -> list[str]:
    """The dotted paths of leaf fields with no description: the reference would show none."""
    return [path for path, held, field in fields(model) if held is None and not field.description]


def render(model: type[BaseModel], heading: str, level: int, prefix: str = "") -> list[str]:
    """``model``'s heading and docstring, a table of its own fields, then each of its sections."""
    parts = ["#" * level + " " + heading, "", inspect.getdoc(model) or "", ""]
    own = [(f"{prefix}{n}", f) for n, f in model.model_fields.items() if section(f.annotation) is None]
    if own:
        rows = [(code(path), code(type_name(f.annotation)), default(f), f.description) for path, f in own]
        parts += [table(("field", "type", "default", "description"), rows), ""]
    for name, field in model.model_fields.items():
        if (held := section(field.annotation)) is not None:
            parts += render(held, f"`{prefix}{name}`", level + 1, f"{prefix}{name}.")
    return parts


def reference() -> str:
    parts = [
        "# Configuration reference",
        "",
        "Generated from the pydantic models by `.venv/bin/python -m tasks.support.reference`; "
        "a test fails when it is out of date. A field is set in YAML by its place in the tree, "
        "or on the command line as `--set section.field=value`.",
        "",
    ]
    for model, title, where in CONFIGS:
        parts += render(model, f"{title}: set by {where}", 2)
    return "\n".join(parts).rstrip() + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    text = reference()
    if args.check:
        current = REFERENCE.read_text(encoding="utf-8") if REFERENCE.exists() else ""
        if current != text:
            sys.exit(f"{REFERENCE}: out of date; run .venv/bin/python -m tasks.support.reference")
        return
    REFERENCE.parent.mkdir(exist_ok=True)
    REFERENCE.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
