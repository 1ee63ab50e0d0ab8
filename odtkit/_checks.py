"""The one place for argument checks and name lookup, shared by every subpackage.

Each check returns the value (converted where that is safe) or raises a ValueError or
TypeError that names the argument, shows the bad value and says what would be right:

    check_positive_int("epochs", 0)      -> epochs must be a positive integer, got epochs=0
    check_real("lr", nan, low=0, low_open=True)
                                         -> lr must be a finite number in (0, inf), got lr=nan
    lookup("model", "mbv2tiny", registry) -> the canonical key, or a choice_error
"""

from __future__ import annotations

import difflib
import math
import numbers
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

V = TypeVar("V")


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


def choice_error(kind: str, value: object, choices: Iterable[str]) -> ValueError:
    """A ValueError naming the bad value, the nearest valid ones and all choices."""
    choices = list(choices)
    near = closest(str(value), choices)
    hint = f" Did you mean {', '.join(repr(c) for c in near)}?" if near else ""
    return ValueError(
        f"unknown {kind} {value!r}.{hint} Valid choices: {', '.join(choices)}."
    )


def lookup(kind: str, name: object, registry: Mapping[str, V] | Iterable[str]) -> str:
    """The registry key that ``name`` means (case and separators ignored), else a
    ``choice_error`` listing the choices. The one name lookup of every registry."""
    keys = list(registry)
    keyed = {normalize_name(k): k for k in keys}
    if not isinstance(name, str) or normalize_name(name) not in keyed:
        raise choice_error(kind, name, keys)
    return keyed[normalize_name(name)]


def check_choice(kind: str, value: object, choices: Iterable[str]) -> str:
    """``value`` if it is exactly one of ``choices`` (no normalizing), else a choice_error."""
    choices = list(choices)
    if not isinstance(value, str) or value not in choices:
        raise choice_error(kind, value, choices)
    return value


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_int(name: str, value: object, *, low: int | None = None, high: int | None = None,
              allow_none: bool = False) -> Any:
    """An integer in [low, high] (None where allowed); numpy and torch integers pass as int."""
    if allow_none and value is None:
        return None
    if not _is_int(value):
        raise TypeError(f"{name} must be an integer, got {name}={value!r}")
    value = int(value)  # type: ignore[call-overload]
    if (low is not None and value < low) or (high is not None and value > high):
        span = (f">= {low}" if high is None else f"<= {high}" if low is None
                else f"in [{low}, {high}]")
        raise ValueError(f"{name} must be an integer {span}, got {name}={value!r}")
    return value


def check_positive_int(name: str, value: object, allow_none: bool = False) -> Any:
    """Return ``value`` if it is an int >= 1 (or None when allowed), else raise naming it."""
    if allow_none and value is None:
        return None
    if not _is_int(value) or int(value) < 1:  # type: ignore[call-overload]
        raise ValueError(f"{name} must be a positive integer, got {name}={value!r}")
    return int(value)  # type: ignore[call-overload]


def check_seed(name: str, value: object) -> int:
    """A seed: a non-negative integer (what torch.Generator.manual_seed and numpy accept)."""
    if not _is_int(value) or int(value) < 0:  # type: ignore[call-overload]
        raise ValueError(f"{name} must be a non-negative integer, got {name}={value!r}; "
                         "e.g. seed=0")
    return int(value)  # type: ignore[call-overload]


def check_real(name: str, value: object, *, low: float | None = None,
               high: float | None = None, low_open: bool = False, high_open: bool = False,
               allow_none: bool = False) -> Any:
    """A finite real number in the interval from ``low`` to ``high`` (``*_open``: the bound
    itself excluded); returned as float. NaN and inf are refused with the range named."""
    if allow_none and value is None:
        return None
    left = "-inf" if low is None else f"{low:g}"
    right = "inf" if high is None else f"{high:g}"
    span = f"{'(' if low_open or low is None else '['}{left}, {right}{')' if high_open or high is None else ']'}"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a finite number in {span}, got {name}={value!r}")
    x = float(value)
    below = low is not None and (x <= low if low_open else x < low)
    above = high is not None and (x >= high if high_open else x > high)
    if not math.isfinite(x) or below or above:
        raise ValueError(f"{name} must be a finite number in {span}, got {name}={value!r}")
    return x
