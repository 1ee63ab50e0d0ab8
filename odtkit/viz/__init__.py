"""Matplotlib figures: pure functions, data in, Figure out.

One submodule per theme; every public name is reachable as ``odt.viz.NAME``.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_PARTS = ("catalogue", "training", "memory", "compression")


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
        raise AttributeError(f"odtkit.viz has no figure {name!r}")
    return getattr(import_module(f".{part}", __name__), name)


def __dir__() -> list[str]:
    return sorted(_part_names())
