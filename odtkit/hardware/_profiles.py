"""Plumbing for the hardware catalogue: sourced numbers and TOML reading.

Every number in a profile is a `Quantity` that says where it comes from and
whether it was derived (computed from clock x operations per cycle) rather
than printed by the vendor. The readers here turn a TOML file into checked
keyword arguments and name the file, the field and the fix on any mistake.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._checks import check_int, check_real, choice_error
from ..units import format_bytes, format_seconds, format_si

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

KINDS = ("mcu", "sbc", "gpu-module", "phone", "laptop")
DTYPES = ("int8", "fp16", "fp32")


@dataclass(frozen=True)
class Spec:
    """How one profile number is checked: its unit, whole or not, zero allowed or not, and
    an upper bound past which a number cannot describe one device or link (a typo in the
    exponent, or the wrong unit), with that bound in words and an example of a good value."""

    unit: str
    whole: bool
    zero_ok: bool
    high: float
    limit: str
    example: str


_PIB = 2**50
_BYTES = Spec("bytes", True, True, _PIB, "1 PiB (more is not the memory of one device)",
              "value = 327680 for 320 KiB")
DEVICE_FIELDS: dict[str, Spec] = {
    "sram_bytes": _BYTES,
    "dram_bytes": _BYTES,
    "flash_bytes": _BYTES,
    "clock_hz": Spec("Hz", False, False, 1e11, "100 GHz", "value = 216000000 for 216 MHz"),
    "bandwidth_bytes_per_s": Spec("bytes/s", False, False, 1e15, "1 PB/s",
                                  "value = 1.728e9 for 1.728 GB/s"),
    "power_w": Spec("W", False, False, 1e4, "10 kW", "value = 0.5 for 500 mW"),
}
PEAK_FIELD = "peak_macs_per_s"
PEAK_SPEC = Spec("MAC/s", False, False, 1e17, "100 PMAC/s (FLOP = 2 MAC)",
                 "value = 4.32e8 for 432 MMAC/s")
LINK_FIELDS: dict[str, Spec] = {
    "throughput_bits_per_s": Spec("bit/s", False, False, 1e13, "10 Tbit/s",
                                  "value = 1000000 for 1 Mbit/s"),
    "latency_s": Spec("s", False, True, 86_400.0, "one day", "value = 0.0075 for 7.5 ms"),
    "energy_per_bit_j": Spec("J/bit", False, False, 1.0, "1 J/bit",
                             "value = 1e-8 for 10 nJ/bit"),
    "duty_cycle": Spec("fraction of time on air", False, False, 1.0,
                       "1 (always on air; 0.01 is 1 %)", "value = 0.01 for 1 %"),
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
        check_real("Quantity value", self.value)  # a finite int or float
        if not isinstance(self.source, str) or not self.source.strip():
            raise ValueError("Quantity needs a non-empty source (datasheet, paper or URL)")
        if not isinstance(self.derived, bool):
            raise TypeError(f"Quantity derived must be True or False, got {self.derived!r}")
        if not isinstance(self.note, str):
            raise TypeError(f"Quantity note must be a string, got {self.note!r}")


def check_number(field: str, value: object, spec: Spec, path: str | None = None) -> None:
    """A ProfileError naming ``field`` (and the file) unless ``value`` is a finite number in
    the spec's range: a whole one for byte counts, zero only where the spec allows it,
    never above the spec's upper bound. The checks are those of ``odtkit._checks``."""
    try:
        if spec.whole:
            check_int(field, value, low=0 if spec.zero_ok else 1, high=int(spec.high))
        else:
            check_real(field, value, low=0.0, low_open=not spec.zero_ok, high=spec.high)
    except (TypeError, ValueError):
        kind, hint = ("a whole number", " (a TOML integer: no decimal point, no quotes)") \
            if spec.whole else ("a finite number", "")
        bound = "zero or more" if spec.zero_ok else "greater than zero"
        shown = f"{type(value).__name__} {value!r}" if isinstance(value, (str, bool)) \
            else repr(value)
        raise ProfileError(f"must be {kind} ({spec.unit}), {bound} and at most {spec.limit}; "
                           f"got {shown}. Write the plain number{hint}, e.g. {spec.example}.",
                           path=path, field=field) from None


def check_numbers(owner: str, specs: Mapping[str, Spec], values: dict[str, Any],
                  sources: Mapping[str, Quantity], unknown: Mapping[str, str]) -> None:
    """Every present number is well-formed and sourced with the same value; nothing extra."""
    for name, value in values.items():
        check_number(name, value, specs[name])
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
    return format_si(value, {"throughput_bits_per_s": "bit/s", "energy_per_bit_j": "J/bit"}[key])


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
    if p.is_dir():
        found = sorted(f.name for f in p.glob("*.toml"))
        hint = (f"it holds {', '.join(found[:5])}{' ...' if len(found) > 5 else ''}; pass one "
                f"of them, e.g. {p / found[0]}" if found else
                "it holds no .toml file; pass the path of a profile file, e.g. my-board.toml")
        raise ProfileError(f"is a folder, not a profile file: {hint}.", path=str(p))
    if not p.is_file():
        raise ProfileError(f"no such profile file. Check the path ({p.resolve()}).", path=str(p))
    try:
        return p.read_text(encoding="utf-8"), str(p)
    except UnicodeDecodeError as err:
        raise ProfileError(f"not UTF-8 text ({err}); a profile is a TOML text file, saved "
                           "as UTF-8.", path=str(p)) from None


def _quantity(table: Any, field: str, spec: Spec, origin: str):
    """A checked Quantity, or the reason string of an unknown one."""
    unit = spec.unit
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
    check_number(f"{field}.value", value, spec, origin)
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


def _collect(data: Mapping[str, Any], fields: Mapping[str, Spec],
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


# fields renamed so that their unit is in the name: old name -> new name
RENAMED = {"throughput_bps": "throughput_bits_per_s"}


def _check_keys(data: Mapping[str, Any], allowed: set[str], origin: str) -> None:
    extra = sorted(set(data) - allowed)
    old = [k for k in extra if RENAMED.get(k) in allowed]
    if old:
        raise ProfileError(f"renamed to {RENAMED[old[0]]} (the unit in the name: bits, not "
                           f"bytes, per second). Rename the table [{old[0]}] to "
                           f"[{RENAMED[old[0]]}]; the value stays the same.",
                           path=origin, field=old[0])
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
        {f"{PEAK_FIELD}.{d}": PEAK_SPEC for d in DTYPES}, origin)
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
    if "throughput_bits_per_s" in unknown:
        raise ProfileError("a link needs a known throughput (value and source).", path=origin,
                           field="throughput_bits_per_s")
    aliases = _aliases(data, origin)
    return {
        "name": _text(data, "name", origin, required=True),
        "description": _text(data, "description", origin, required=False),
        "aliases": aliases,
        "quantities": known,
        "unknown": unknown,
    }
