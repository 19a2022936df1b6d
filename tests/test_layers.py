"""The import graph of the tree: layers that only import downwards, and no circle.

Drawn from the source with `ast`: every ``import`` and ``from … import`` statement, at module
level or inside a function (lazy imports count), of every module of `edgeroute`, `tasks` and
`flows`. ``from package import name`` points at ``package.name`` when that is a module.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import ROOT

# Lowest first: a module may import its own layer and those below it, never one above.
LAYERS = ("edgeroute", "tasks.support", "tasks", "flows")
THIRD_PARTY_ABOVE_THE_RUNTIME = ("mlflow", "prefect")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for top in ("edgeroute", "tasks", "flows") for p in (ROOT / top).rglob("*.py")}


def imports(path: Path, known: set[str]) -> set[str]:
    """The absolute names ``path`` imports, each resolved to a module of ``known`` when it is one."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                child = f"{node.module}.{alias.name}"
                found.add(child if child in known else node.module)
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(path, set(known)) for name, path in known.items()}


def layer(name: str) -> int | None:
    matches = [i for i, top in enumerate(LAYERS) if name == top or name.startswith(top + ".")]
    return max(matches) if matches else None


def test_no_module_imports_a_layer_above_its_own():
    upward = [
        f"{module} -> {target}"
        for module, targets in graph().items()
        for target in targets
        if layer(target) is not None and layer(target) > layer(module)
    ]
    assert upward == []


def test_the_runtime_imports_neither_mlflow_nor_prefect():
    runtime = {m: t for m, t in graph().items() if layer(m) == 0}
    assert "edgeroute.cli" in runtime and "edgeroute.server" in runtime
    found = [
        f"{module} -> {target}"
        for module, targets in runtime.items()
        for target in targets
        if target.partition(".")[0] in THIRD_PARTY_ABOVE_THE_RUNTIME
    ]
    assert found == []


def test_there_is_no_circle():
    edges = graph()
    internal = {m: {t for t in targets if t in edges and t != m} for m, targets in edges.items()}
    state: dict[str, str] = {}
    circles = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in sorted(internal[module]):
            if state.get(target) == "open":
                circles.append(" -> ".join([*path[path.index(target) :], target]))
            elif target not in state:
                visit(target, [*path, target])
        state[module] = "done"

    for module in sorted(internal):
        if module not in state:
            visit(module, [module])
    assert circles == []


def test_the_graph_sees_lazy_imports(tmp_path):
    source = tmp_path / "lazy.py"
    source.write_text("def f():\n    from tasks.support import tracking\n    import flows.training\n")
    assert imports(source, {"tasks.support.tracking"}) == {"tasks.support.tracking", "flows.training"}


def test_no_function_of_the_runtime_is_longer_than_60_lines():
    # A newcomer reads a function at once: create_app, cli.serve and the service's methods too.
    long = [
        f"{module}.{node.name}: {node.end_lineno - node.lineno + 1} lines"
        for module, path in modules().items()
        if layer(module) == 0
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno - node.lineno + 1 > 60
    ]
    assert long == []
