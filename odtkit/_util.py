"""Small helpers shared by the modules: helpful errors, smoke mode, lazy part lookup."""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable


def normalize_name(name: str) -> str:
    """Case- and separator-insensitive key: 'STM32 F746' and 'stm32-f746' agree."""
    return "".join(ch for ch in str(name).lower() if ch.isalnum())


def closest(name: str, choices: Iterable[str], n: int = 3) -> list[str]:
    """The known names nearest to ``name`` (compared without case or separators)."""
    choices = list(choices)
    keyed = {normalize_name(c): c for c in choices}
    key = normalize_name(name)
    hits = difflib.get_close_matches(key, list(keyed), n=n, cutoff=0.5)
    # a prefix ('stm32f74' of 'stm32f746') is the likeliest typo of all
    prefixed = [k for k in keyed if key and (k.startswith(key) or key.startswith(k))]
    ordered = list(dict.fromkeys(prefixed + hits))[:n]
    return [keyed[k] for k in ordered]


def check_positive_int(name: str, value: object, allow_none: bool = False) -> int | None:
    """Return ``value`` if it is an int >= 1 (or None when allowed), else raise naming it."""
    if allow_none and value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {name}={value!r}")
    return value


def choice_error(kind: str, value: object, choices: Iterable[str]) -> ValueError:
    """A ValueError naming the bad value, the nearest valid ones and all choices."""
    choices = list(choices)
    near = closest(str(value), choices)
    hint = f" Did you mean {', '.join(repr(c) for c in near)}?" if near else ""
    return ValueError(
        f"unknown {kind} {value!r}.{hint} Valid choices: {', '.join(choices)}."
    )


def smoke() -> bool:
    """True under CI or ODTKIT_SMOKE=1: notebooks and scripts shrink their work."""
    flag = os.environ.get("ODTKIT_SMOKE", "")
    if flag:
        return flag.lower() not in ("0", "false", "no")
    return bool(os.environ.get("CI"))


def part_lookup(package: str, parts: tuple[str, ...], what: str):
    """``(__getattr__, __dir__)`` for a package whose public names live in its parts.

    Each part module lists its names in ``__all__``; ``package.NAME`` finds NAME in
    whichever part has it, importing parts (and matplotlib or ipywidgets) only on use.
    """
    from importlib import import_module

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
