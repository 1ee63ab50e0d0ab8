"""Lazy attribute lookup for packages whose public names live in their parts."""

from __future__ import annotations

from importlib import import_module


def part_lookup(package: str, parts: tuple[str, ...], what: str):
    """``(__getattr__, __dir__)`` for a package whose public names live in its parts.

    Each part module lists its names in ``__all__``; ``package.NAME`` finds NAME in
    whichever part has it, importing parts (and matplotlib or ipywidgets) only on use.
    """
    def names() -> dict[str, str]:
        found: dict[str, str] = {}
        for part in parts:
            for name in getattr(import_module(f".{part}", package), "__all__", ()):
                found[name] = part
        return found

    def __getattr__(name: str):
        part = names().get(name)
        if part is None:
            raise AttributeError(f"{package} has no {what} {name!r}")
        return getattr(import_module(f".{part}", package), name)

    def __dir__() -> list[str]:
        return sorted(names())

    return __getattr__, __dir__


def export_lookup(package: str, exports: dict[str, str]):
    """``(__getattr__, __dir__)`` for a package that maps each public name to the part
    module defining it (``{"name": "part"}``); a part is imported on first use."""
    def __getattr__(name: str):
        if name in exports:
            return getattr(import_module(f".{exports[name]}", package), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(exports)

    return __getattr__, __dir__
