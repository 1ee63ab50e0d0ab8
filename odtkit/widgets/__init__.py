"""The ipywidgets explorers: thin views over the same pure functions the tests cover.

One submodule per theme; every public name is reachable as ``odt.widgets.NAME``.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_PARTS = ("memory", "compression")


def _part_names() -> dict[str, str]:
    found: dict[str, str] = {}
    for part in _PARTS:
        module = import_module(f".{part}", __name__)
        for name in getattr(module, "__all__", ()):
            found[name] = part
    return found


def __getattr__(name: str) -> Any:
    part = _part_names().get(name)
    if part is None:
        raise AttributeError(f"odtkit.widgets has no explorer {name!r}")
    return getattr(import_module(f".{part}", __name__), name)


def __dir__() -> list[str]:
    return sorted(_part_names())
