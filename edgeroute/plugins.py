"""What other installed parts add to the runtime's command line, found by entry point.

A distribution registers a `Plugin` under the ``edgeroute.plugins`` entry-point group, named
after the extra that installs what it needs; the training side registers ``train`` (its
commands, and bundles given as ``models:/<name>@<alias>``). The runtime never imports the
training side: it loads what is registered, and when a registered plugin cannot be imported
(a runtime-only install) it says which extra to install.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path

import typer

GROUP = "edgeroute.plugins"


class PluginError(RuntimeError):
    """A plugin's answer to a request it cannot serve, in words for the user."""


@dataclass(frozen=True)
class Plugin:
    """Commands added to ``edgeroute``, how a model URI (``models:/…``) becomes a bundle
    directory and the version it is, and which version an alias URI names now (None: the plugin
    resolves no URIs)."""

    commands: typer.Typer
    resolve_model: Callable[[str], tuple[Path, str | None]] | None = None
    lookup_model: Callable[[str], str] | None = None
    # Removes what resolve_model downloaded for a bundle directory it returned.
    forget_model: Callable[[Path], None] | None = None


@dataclass(frozen=True)
class Missing:
    """A registered plugin that cannot be imported: the extra that installs it, and why."""

    extra: str
    reason: str

    def advice(self) -> str:
        return f"install the {self.extra!r} extra: pip install 'edgeroute[{self.extra}]' ({self.reason})"


@dataclass(frozen=True)
class Plugins:
    loaded: dict[str, Plugin] = field(default_factory=dict)
    missing: list[Missing] = field(default_factory=list)


@functools.cache
def plugins() -> Plugins:
    """The registered plugins, each imported once; those that cannot be are listed as missing."""
    found = Plugins()
    for point in entry_points(group=GROUP):
        try:
            plugin = point.load()
        except ImportError as exc:
            found.missing.append(Missing(point.name, str(exc)))
            continue
        if not isinstance(plugin, Plugin):
            raise TypeError(f"entry point {point.value} ({GROUP}) is not an edgeroute.plugins.Plugin")
        found.loaded[point.name] = plugin
    return found
