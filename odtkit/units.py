"""Human units: bytes in binary prefixes, other quantities in SI prefixes, durations.

Units live in names across odtkit (``*_bytes``, ``*_s``, ``*_bits_per_s``); these
functions only turn such numbers into text for tables, figures and messages.
"""

from __future__ import annotations

import numbers

__all__ = ["format_bytes", "format_si", "format_seconds"]

_BINARY = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")
_SI = ("", "k", "M", "G", "T", "P", "E")


def _trim(x: float) -> str:
    """Three significant digits, no trailing zeros: 320, 1.5, 12.8 (whole numbers from 100)."""
    return f"{x:.0f}" if abs(x) >= 100 else f"{x:.3g}"


def _number(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{what} needs a number, got {value!r}")
    return value


def format_bytes(nbytes: float) -> str:
    """Bytes in binary units, as memory is sold: 327680 -> '320 KiB', 1536 -> '1.5 KiB'."""
    size = abs(_number(nbytes, "format_bytes"))
    sign = "-" if nbytes < 0 else ""
    unit = 0
    while size >= 1024 and unit < len(_BINARY) - 1:
        size /= 1024
        unit += 1
    text = f"{size:g}" if unit == 0 else _trim(size)
    return f"{sign}{text} {_BINARY[unit]}"


def format_si(value: float, unit: str) -> str:
    """A value with a decimal prefix: format_si(2.16e8, 'Hz') -> '216 MHz'."""
    size = abs(_number(value, "format_si"))
    sign = "-" if value < 0 else ""
    step = 0
    while size >= 1000 and step < len(_SI) - 1:
        size /= 1000
        step += 1
    prefix = _SI[step]
    for small in ("m", "u", "n", "p"):
        if size == 0 or size >= 1:
            break
        size, prefix = size * 1000, small
    return f"{sign}{_trim(size)} {prefix}{unit}"


def format_seconds(seconds: float) -> str:
    """A duration in h, min, s, ms, us or ns: 0.0123 -> '12.3 ms'."""
    value = _number(seconds, "format_seconds")
    if value < 0:
        return "-" + format_seconds(-value)
    if value == 0:
        return "0 s"
    for scale, unit in ((3600, "h"), (60, "min"), (1, "s"), (1e-3, "ms"), (1e-6, "us")):
        if value >= scale:
            return f"{_trim(value / scale)} {unit}"
    return f"{_trim(value / 1e-9)} ns"
