"""Plumbing for the hardware catalogue: sourced numbers and TOML reading.

Every number in a profile is a `Quantity` that says where it comes from and
whether it was derived (computed from clock x operations per cycle) rather
than printed by the vendor. The readers here turn a TOML file into checked
keyword arguments and name the file, the field and the fix on any mistake.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._checks import choice_error
from ..units import format_bytes, format_seconds, format_si

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

KINDS = ("mcu", "sbc", "gpu-module", "phone", "laptop")
DTYPES = ("int8", "fp16", "fp32")

# device field -> (unit word for messages, must be a whole number, zero allowed)
DEVICE_FIELDS: dict[str, tuple[str, bool, bool]] = {
    "sram_bytes": ("bytes", True, True),
    "dram_bytes": ("bytes", True, True),
    "flash_bytes": ("bytes", True, True),
    "clock_hz": ("Hz", False, False),
    "bandwidth_bytes_per_s": ("bytes/s", False, False),
    "power_w": ("W", False, False),
}
PEAK_FIELD = "peak_macs_per_s"
LINK_FIELDS: dict[str, tuple[str, bool, bool]] = {
    "throughput_bps": ("bit/s", False, False),
    "latency_s": ("s", False, True),
    "energy_per_bit_j": ("J/bit", False, False),
    "duty_cycle": ("fraction of time on air", False, False),
}
_QUANTITY_KEYS = ("value", "source", "derived", "note")


class ProfileError(ValueError):
    """A hardware profile is malformed; the message names the file, the field and the fix."""

    def __init__(self, message: str, *, path: str | None = None, field: str | None = None):
        self.message = message
        self.path = path
        self.field = field
        where = ": ".join(part for part in (path, f"field {field!r}" if field else None) if part)
        super().__init__(f"{where}: {message}" if where else message)


class UnknownSpecError(ValueError):
    """A profile does not know a number a calculation needs (e.g. no fp16 peak)."""


@dataclass(frozen=True)
class Quantity:
    """One sourced number: its value, where it comes from, and whether it was derived."""

    value: float
    source: str
    derived: bool = False
    note: str = ""

    def __post_init__(self) -> None:
        if isinstance(self.value, bool) or not isinstance(self.value, (int, float)):
            raise TypeError(f"Quantity value must be a number, got {self.value!r}")
        if not math.isfinite(self.value):
            raise ValueError(f"Quantity value must be finite, got {self.value!r}")
        if not isinstance(self.source, str) or not self.source.strip():
            raise ValueError("Quantity needs a non-empty source (datasheet, paper or URL)")
        if not isinstance(self.derived, bool):
            raise TypeError(f"Quantity derived must be True or False, got {self.derived!r}")
        if not isinstance(self.note, str):
            raise TypeError(f"Quantity note must be a string, got {self.note!r}")


def check_numbers(owner: str, specs: Mapping[str, tuple[str, bool, bool]],
                  values: dict[str, Any], sources: Mapping[str, Quantity],
                  unknown: Mapping[str, str]) -> None:
    """Every present number is well-formed and sourced with the same value; nothing extra."""
    for name, value in values.items():
        unit, whole, zero_ok = specs[name]
        ok_type = isinstance(value, int) if whole else isinstance(value, (int, float))
        if isinstance(value, bool) or not ok_type or not math.isfinite(value):
            raise ProfileError(f"expected a {'whole ' if whole else ''}number in {unit}, "
                               f"got {value!r}.", field=name)
        if value < 0 or (value == 0 and not zero_ok):
            raise ProfileError(f"must be {'>= 0' if zero_ok else '> 0'} {unit}, got {value!r}.",
                               field=name)
    unsourced = sorted(set(values) - set(sources))
    if unsourced:
        raise ProfileError(f"{owner}: no source. Pass sources={{{unsourced[0]!r}: "
                           "Quantity(value, 'datasheet or URL')}.", field=unsourced[0])
    orphans = sorted(set(sources) - set(values))
    if orphans:
        raise ProfileError(f"{owner}: a source is given but the number is absent.",
                           field=orphans[0])
    for name, quantity in sources.items():
        if not isinstance(quantity, Quantity):
            raise ProfileError(f"{owner}: sources must hold Quantity objects, got {quantity!r}.",
                               field=name)
        if quantity.value != values[name]:
            raise ProfileError(f"{owner}: value {values[name]!r} differs from its source's "
                               f"{quantity.value!r}.", field=name)
    for name, reason in unknown.items():
        if name not in specs:
            raise ProfileError(f"{owner}: unknown-reason for a field that does not exist.",
                               field=name)
        if name in values:
            raise ProfileError(f"{owner}: marked unknown but also given a value.", field=name)
        if not isinstance(reason, str):
            raise ProfileError(f"{owner}: the reason must be a string, got {reason!r}.",
                               field=name)


def show_device_number(key: str, value: float) -> str:
    """A device number in human units: bytes binary, the rest with decimal prefixes."""
    if key.endswith("_bytes"):
        return format_bytes(value)
    unit = {"clock_hz": "Hz", "bandwidth_bytes_per_s": "B/s", "power_w": "W"}.get(key, "MAC/s")
    return format_si(value, unit)


def show_link_number(key: str, value: float) -> str:
    """A link number in human units."""
    if key == "latency_s":
        return format_seconds(value)
    if key == "duty_cycle":
        return f"{value:g}"
    return format_si(value, {"throughput_bps": "bit/s", "energy_per_bit_j": "J/bit"}[key])


def describe_numbers(title: str, description: str, keys: list[str],
                     sources: Mapping[str, Quantity], unknown: Mapping[str, str],
                     show: Any) -> str:
    """A table of sourced numbers: field, value, 'derived' or 'unknown', then source and note."""
    width = max(len(k) for k in keys)
    lines = [title] + ([f"  {description}"] if description else [])
    for key in keys:
        if key in sources:
            q = sources[key]
            mark = "derived" if q.derived else ""
            lines.append(f"  {key:<{width}}  {show(key, q.value):>12}  {mark:<7}  {q.source}")
            if q.note:
                lines.append(f"  {'':<{width}}  {'':>12}  {'':<7}  note: {q.note}")
        else:
            reason = unknown.get(key, "no source gives it")
            lines.append(f"  {key:<{width}}  {'-':>12}  {'unknown':<7}  {reason}")
    return "\n".join(lines)


# ---------------------------------------------------------------- TOML reading


def read_toml(text: str, origin: str) -> dict[str, Any]:
    """Parse TOML text; a syntax error becomes a ProfileError naming the file and line."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ProfileError(
            f"not valid TOML ({err}). Fix the syntax at that line; "
            "strings need quotes, tables look like [sram_bytes].",
            path=origin,
        ) from None


def read_path(path: str | Path) -> tuple[str, str]:
    """The text of a profile file and the name to report it under."""
    p = Path(path)
    if not p.is_file():
        raise ProfileError(f"no such profile file. Check the path ({p.resolve()}).", path=str(p))
    return p.read_text(encoding="utf-8"), str(p)


def _quantity(table: Any, field: str, spec: tuple[str, bool, bool], origin: str):
    """A checked Quantity, or the reason string of an unknown one."""
    unit, whole, zero_ok = spec
    if not isinstance(table, dict):
        raise ProfileError(
            f"expected a table with value and source, got {type(table).__name__} {table!r}. "
            f"Write a [{field}] table with value = <number in {unit}> and "
            f"source = \"datasheet or URL\" (or unknown = \"why\").",
            path=origin,
            field=field,
        )
    if "unknown" in table:
        reason = table["unknown"]
        extra = sorted(set(table) - {"unknown"})
        if not isinstance(reason, str) or not reason.strip() or extra:
            raise ProfileError(
                "an unknown number is written as a table holding only unknown = \"why it is "
                f"not known\" (got {table!r}).",
                path=origin,
                field=field,
            )
        return reason.strip()
    extra = sorted(set(table) - set(_QUANTITY_KEYS))
    if extra:
        raise ProfileError(
            f"unexpected key(s) {extra}. Allowed: {', '.join(_QUANTITY_KEYS)} or unknown.",
            path=origin,
            field=field,
        )
    for key in ("value", "source"):
        if key not in table:
            raise ProfileError(
                f"missing {key!r}. Every number needs value and source "
                f"(or write unknown = \"why\" instead).",
                path=origin,
                field=f"{field}.{key}",
            )
    value = table["value"]
    number_ok = isinstance(value, int) if whole else isinstance(value, (int, float))
    if isinstance(value, bool) or not number_ok:
        want = "a whole number (TOML integer)" if whole else "a number"
        raise ProfileError(
            f"expected {want} in {unit}, got {type(value).__name__} {value!r}. "
            f"Write the plain number, e.g. value = 327680 for 320 KiB.",
            path=origin,
            field=f"{field}.value",
        )
    if not math.isfinite(value) or value < 0 or (value == 0 and not zero_ok):
        bound = "zero or more" if zero_ok else "greater than zero"
        raise ProfileError(
            f"must be {bound} ({unit}), got {value!r}.",
            path=origin,
            field=f"{field}.value",
        )
    for key, kind in (("source", str), ("derived", bool), ("note", str)):
        if key in table and not isinstance(table[key], kind):
            raise ProfileError(
                f"expected {kind.__name__}, got {type(table[key]).__name__} {table[key]!r}.",
                path=origin,
                field=f"{field}.{key}",
            )
    if not table["source"].strip():
        raise ProfileError("source is empty. Name the datasheet, paper or URL.", path=origin,
                           field=f"{field}.source")
    return Quantity(value, table["source"].strip(), table.get("derived", False),
                    table.get("note", "").strip())


def _text(data: Mapping[str, Any], key: str, origin: str, *, required: bool) -> str:
    if key not in data:
        if required:
            raise ProfileError(f"missing. Add a line like {key} = \"...\" at the top of the file.",
                               path=origin, field=key)
        return ""
    value = data[key]
    if not isinstance(value, str) or (required and not value.strip()):
        raise ProfileError(f"expected a non-empty string, got {value!r}.", path=origin, field=key)
    return value.strip()


def _collect(data: Mapping[str, Any], fields: Mapping[str, tuple[str, bool, bool]],
             origin: str) -> tuple[dict[str, Quantity], dict[str, str]]:
    known: dict[str, Quantity] = {}
    unknown: dict[str, str] = {}
    for field, spec in fields.items():
        if field not in data:
            raise ProfileError(
                f"missing. Add a [{field}] table with value and source "
                f"(or unknown = \"why\" when no source gives it).",
                path=origin,
                field=field,
            )
        got = _quantity(data[field], field, spec, origin)
        (unknown if isinstance(got, str) else known)[field] = got
    return known, unknown


def _aliases(data: Mapping[str, Any], origin: str) -> tuple[str, ...]:
    aliases = data.get("aliases", [])
    if not isinstance(aliases, list) or not all(isinstance(a, str) and a for a in aliases):
        raise ProfileError(f"expected a list of strings, got {aliases!r}.", path=origin,
                           field="aliases")
    return tuple(aliases)


def _check_keys(data: Mapping[str, Any], allowed: set[str], origin: str) -> None:
    extra = sorted(set(data) - allowed)
    if extra:
        raise ProfileError(f"unexpected key(s) {extra}. Allowed: {sorted(allowed)}.",
                           path=origin, field=extra[0])


def parse_device(data: Mapping[str, Any], origin: str) -> dict[str, Any]:
    """Checked keyword arguments for `DeviceProfile.from_quantities` from parsed TOML."""
    header = {"name", "kind", "description", "aliases"}
    _check_keys(data, header | set(DEVICE_FIELDS) | {PEAK_FIELD}, origin)
    name = _text(data, "name", origin, required=True)
    kind = _text(data, "kind", origin, required=True)
    if kind not in KINDS:
        raise ProfileError(str(choice_error("kind", kind, KINDS)), path=origin, field="kind")
    aliases = _aliases(data, origin)
    known, unknown = _collect(data, DEVICE_FIELDS, origin)
    peaks = data.get(PEAK_FIELD)
    if not isinstance(peaks, dict):
        raise ProfileError(
            f"missing or not a table. Add [{PEAK_FIELD}.int8], [{PEAK_FIELD}.fp16] and "
            f"[{PEAK_FIELD}.fp32] tables (MAC/s, value and source, or unknown = \"why\").",
            path=origin, field=PEAK_FIELD)
    _check_keys({f"{PEAK_FIELD}.{k}": v for k, v in peaks.items()},
                {f"{PEAK_FIELD}.{d}" for d in DTYPES}, origin)
    peak_known, peak_unknown = _collect(
        {f"{PEAK_FIELD}.{k}": v for k, v in peaks.items()},
        {f"{PEAK_FIELD}.{d}": ("MAC/s", False, False) for d in DTYPES}, origin)
    return {
        "name": name,
        "kind": kind,
        "description": _text(data, "description", origin, required=False),
        "aliases": aliases,
        "quantities": {**known, **peak_known},
        "unknown": {**unknown, **peak_unknown},
    }


def parse_link(data: Mapping[str, Any], origin: str) -> dict[str, Any]:
    """Checked keyword arguments for `LinkProfile.from_quantities` from parsed TOML."""
    _check_keys(data, {"name", "description", "aliases"} | set(LINK_FIELDS), origin)
    known, unknown = _collect(data, LINK_FIELDS, origin)
    if "throughput_bps" in unknown:
        raise ProfileError("a link needs a known throughput (value and source).", path=origin,
                           field="throughput_bps")
    if "duty_cycle" in known and known["duty_cycle"].value > 1:
        raise ProfileError("a duty cycle is a fraction in (0, 1], e.g. 0.01 for 1 %.",
                           path=origin, field="duty_cycle.value")
    aliases = _aliases(data, origin)
    return {
        "name": _text(data, "name", origin, required=True),
        "description": _text(data, "description", origin, required=False),
        "aliases": aliases,
        "quantities": known,
        "unknown": unknown,
    }
