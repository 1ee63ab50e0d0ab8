"""Hardware catalogue: devices from KB-class microcontrollers to GB-class modules, and links.

Every number carries its source and whether it was derived (clock x MAC per
cycle) rather than printed by a vendor; numbers no source gives are absent,
with the reason, instead of guessed. Throughput is in MAC/s (one
multiply-accumulate; FLOP = 2 MAC, so a vendor's 472 GFLOP/s is 236 GMAC/s).

    dev = device("stm32f746")
    dev.fit(report).verdict        # does this training step fit?
    dev.roofline_s(macs, bytes_moved, dtype="int8")
    link("lorawan").transfer_s(nbytes)
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from types import MappingProxyType
from typing import Any

from .._checks import check_choice, check_real, lookup, normalize_name
from ._profiles import (
    DEVICE_FIELDS,
    DTYPES,
    KINDS,
    LINK_FIELDS,
    PEAK_FIELD,
    PEAK_SPEC,
    RENAMED,
    ProfileError,
    Quantity,
    UnknownSpecError,
    check_number,
    check_numbers,
    describe_numbers,
    parse_device,
    parse_link,
    read_path,
    read_toml,
    show_device_number,
    show_link_number,
)
from .fit import FitReport, MemoryCheck, fit_device

__all__ = [
    "DTYPES",
    "KINDS",
    "DeviceProfile",
    "FitReport",
    "LinkProfile",
    "MemoryCheck",
    "ProfileError",
    "Quantity",
    "UnknownNameError",
    "UnknownSpecError",
    "device",
    "devices",
    "link",
    "links",
    "load_link",
    "load_profile",
]


class UnknownNameError(ValueError, LookupError):
    """No device or link by that name; the message suggests the closest known ones."""


_PEAK_SPECS = {f"{PEAK_FIELD}.{d}": PEAK_SPEC for d in DTYPES}


@dataclass(frozen=True, kw_only=True)
class DeviceProfile:
    """A device: memories in bytes, clock, peak MAC/s per dtype, bandwidth and power.

    Peaks count multiply-accumulates per second (FLOP = 2 MAC: 472 GFLOP/s is
    236e9 MAC/s) for the dtypes int8, fp16 and fp32 where a source gives them.
    ``sources`` maps each present number ('sram_bytes', 'peak_macs_per_s.int8', ...)
    to its `Quantity` (value, source, derived, note); ``unknown`` maps absent ones
    to the reason. ``dram_bytes`` is 0 on microcontrollers without DRAM.
    """

    name: str
    kind: str
    sram_bytes: int | None = None
    dram_bytes: int | None = None
    flash_bytes: int | None = None
    clock_hz: float | None = None
    peak_macs_per_s: Mapping[str, float] = field(default_factory=dict, hash=False)
    bandwidth_bytes_per_s: float | None = None
    power_w: float | None = None
    sources: Mapping[str, Quantity] = field(default_factory=dict, hash=False, repr=False)
    unknown: Mapping[str, str] = field(default_factory=dict, hash=False, repr=False)
    description: str = field(default="", repr=False)
    aliases: tuple[str, ...] = field(default=(), repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not normalize_name(self.name):
            raise ProfileError(f"a device needs a name, got {self.name!r}.", field="name")
        try:
            check_choice("device kind", self.kind, KINDS)
        except ValueError as err:
            raise ProfileError(str(err), field="kind") from None
        peaks = dict(self.peak_macs_per_s)
        for dtype in peaks:
            try:
                check_choice("dtype", dtype, DTYPES)
            except ValueError as err:
                raise ProfileError(str(err), field=PEAK_FIELD) from None
        values = {f: getattr(self, f) for f in DEVICE_FIELDS if getattr(self, f) is not None}
        values.update({f"{PEAK_FIELD}.{d}": v for d, v in peaks.items()})
        check_numbers(self.name, {**DEVICE_FIELDS, **_PEAK_SPECS}, values, self.sources,
                       self.unknown)
        if self.kind == "mcu" and self.sram_bytes is None:
            raise ProfileError(f"{self.name}: a microcontroller needs sram_bytes.",
                               field="sram_bytes")
        if self.kind != "mcu" and not self.dram_bytes:
            raise ProfileError(f"{self.name}: a {self.kind} needs dram_bytes > 0.",
                               field="dram_bytes")
        object.__setattr__(self, "peak_macs_per_s", MappingProxyType(peaks))
        object.__setattr__(self, "sources", MappingProxyType(dict(self.sources)))
        object.__setattr__(self, "unknown", MappingProxyType(dict(self.unknown)))
        object.__setattr__(self, "aliases", tuple(self.aliases))

    @classmethod
    def from_quantities(cls, *, name: str, kind: str, quantities: Mapping[str, Quantity],
                        unknown: Mapping[str, str] | None = None, description: str = "",
                        aliases: tuple[str, ...] = ()) -> DeviceProfile:
        """Build a profile from sourced numbers keyed like ``sources``."""
        values: dict[str, Any] = {}
        peaks: dict[str, float] = {}
        for key, quantity in quantities.items():
            if key in DEVICE_FIELDS:
                values[key] = quantity.value
            elif key in _PEAK_SPECS:
                peaks[key.split(".", 1)[1]] = quantity.value
            else:
                raise ProfileError(f"no such device number. Known: "
                                   f"{', '.join([*DEVICE_FIELDS, *_PEAK_SPECS])}.", field=key)
        return cls(name=name, kind=kind, **values, peak_macs_per_s=peaks, sources=quantities,
                   unknown=unknown or {}, description=description, aliases=aliases)

    def variant(self, name: str, *, source: str, **values: float) -> DeviceProfile:
        """A what-if copy with some numbers changed, each carrying ``source``; peaks are
        ``peak_int8=...``, e.g. ``variant('f746-512k', sram_bytes=524288, source='what-if')``."""
        quantities = dict(self.sources)
        unknown = dict(self.unknown)
        for key, value in values.items():
            key = f"{PEAK_FIELD}.{key[5:]}" if key.startswith("peak_") else key
            spec = {**DEVICE_FIELDS, **_PEAK_SPECS}.get(key)
            if spec is not None:  # an unknown key is named by from_quantities below
                check_number(key, value, spec)
            quantities[key] = Quantity(value, source, note=f"changed from {self.name}")
            unknown.pop(key, None)
        return DeviceProfile.from_quantities(name=name, kind=self.kind, quantities=quantities,
                                             unknown=unknown, description=self.description)

    @property
    def derived_fields(self) -> tuple[str, ...]:
        """Names of the numbers computed rather than printed by a vendor."""
        return tuple(k for k, q in self.sources.items() if q.derived)

    def peak(self, dtype: str = "fp32") -> float:
        """Peak MAC/s for ``dtype``; a clear error when no source gives it."""
        check_choice("dtype", dtype, DTYPES)
        if dtype not in self.peak_macs_per_s:
            why = self.unknown.get(f"{PEAK_FIELD}.{dtype}", "no source gives it")
            known = ", ".join(self.peak_macs_per_s) or "none"
            raise UnknownSpecError(f"{self.name} has no {dtype} peak ({why}); "
                                   f"known dtypes: {known}")
        return self.peak_macs_per_s[dtype]

    def roofline_s(self, macs: float, bytes_moved: float, dtype: str = "fp32") -> float:
        """Roofline time of a workload: max(macs / peak MAC/s, bytes / bandwidth), in seconds."""
        check_real("macs", macs, low=0)
        check_real("bytes_moved", bytes_moved, low=0)
        peak = self.peak(dtype)
        if self.bandwidth_bytes_per_s is None:
            why = self.unknown.get("bandwidth_bytes_per_s", "no source gives it")
            raise UnknownSpecError(f"{self.name} has no memory bandwidth ({why})")
        return max(macs / peak, bytes_moved / self.bandwidth_bytes_per_s)

    def fit(self, need: Any, *, dtype: str | None = None,
            weights_in_flash: bool | None = None) -> FitReport:
        """Does ``need`` (bytes of RAM, or a memory report) fit? See `FitReport`.

        With a report, frozen weights go to flash on an MCU whose flash size is known
        (``weights_in_flash`` overrides), and the step time is a roofline estimate at
        ``dtype`` (default: the report's ``precision`` if it names a dtype, else fp32).
        """
        return fit_device(self, need, dtype=dtype, weights_in_flash=weights_in_flash)

    def describe(self) -> str:
        """Each number with its source; derived ones marked, absent ones explained."""
        return describe_numbers(f"{self.name} ({self.kind})", self.description,
                                [*DEVICE_FIELDS, *_PEAK_SPECS], self.sources, self.unknown,
                                show_device_number)


@dataclass(frozen=True, kw_only=True)
class LinkProfile:
    """A network link: application throughput, latency, energy per bit and duty cycle.

    ``throughput_bits_per_s`` is in bits (not bytes) per second, as links are specified;
    ``duty_cycle`` is the share of time a sender may be on air (e.g. 1 % on EU868
    LoRaWAN), so ``transfer_s`` stretches by 1 / duty_cycle.
    """

    name: str
    throughput_bits_per_s: float
    latency_s: float | None = None
    energy_per_bit_j: float | None = None
    duty_cycle: float | None = None
    sources: Mapping[str, Quantity] = field(default_factory=dict, hash=False, repr=False)
    unknown: Mapping[str, str] = field(default_factory=dict, hash=False, repr=False)
    description: str = field(default="", repr=False)
    aliases: tuple[str, ...] = field(default=(), repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not normalize_name(self.name):
            raise ProfileError(f"a link needs a name, got {self.name!r}.", field="name")
        values = {f: getattr(self, f) for f in LINK_FIELDS if getattr(self, f) is not None}
        check_numbers(self.name, LINK_FIELDS, values, self.sources, self.unknown)
        if "throughput_bits_per_s" not in values:
            raise ProfileError(f"{self.name}: throughput_bits_per_s is required.",
                               field="throughput_bits_per_s")
        object.__setattr__(self, "sources", MappingProxyType(dict(self.sources)))
        object.__setattr__(self, "unknown", MappingProxyType(dict(self.unknown)))
        object.__setattr__(self, "aliases", tuple(self.aliases))

    @classmethod
    def from_quantities(cls, *, name: str, quantities: Mapping[str, Quantity],
                        unknown: Mapping[str, str] | None = None, description: str = "",
                        aliases: tuple[str, ...] = ()) -> LinkProfile:
        """Build a link from sourced numbers keyed by field name."""
        for key in quantities:
            if key not in LINK_FIELDS:
                new = f" ({key} is now {RENAMED[key]})" if key in RENAMED else ""
                raise ProfileError(f"no such link number{new}. Known: "
                                   f"{', '.join(LINK_FIELDS)}.", field=key)
        return cls(name=name, **{k: q.value for k, q in quantities.items()}, sources=quantities,
                   unknown=unknown or {}, description=description, aliases=aliases)

    @staticmethod
    def _bits(nbytes: float) -> float:
        return 8.0 * check_real("nbytes", nbytes, low=0)

    def transfer_s(self, nbytes: float) -> float:
        """Seconds to send ``nbytes``: latency + bits / throughput, stretched by the duty cycle."""
        on_air = self._bits(nbytes) / self.throughput_bits_per_s
        return (self.latency_s or 0.0) + on_air / (self.duty_cycle or 1.0)

    def energy_j(self, nbytes: float) -> float:
        """Joules the sender spends on ``nbytes``: bits x energy per bit."""
        bits = self._bits(nbytes)
        if self.energy_per_bit_j is None:
            why = self.unknown.get("energy_per_bit_j", "no source gives it")
            raise UnknownSpecError(f"link {self.name} has no energy per bit ({why})")
        return bits * self.energy_per_bit_j

    def describe(self) -> str:
        """Each number with its source; derived ones marked, absent ones explained."""
        return describe_numbers(f"{self.name} (link)", self.description, list(LINK_FIELDS),
                                self.sources, self.unknown, show_link_number)


# ---------------------------------------------------------------- loading and lookup


def _rethrow(err: ProfileError, origin: str) -> ProfileError:
    return ProfileError(err.message, path=origin, field=err.field)


def _device_from_text(text: str, origin: str) -> DeviceProfile:
    kwargs = parse_device(read_toml(text, origin), origin)
    try:
        return DeviceProfile.from_quantities(**kwargs)
    except ProfileError as err:
        raise _rethrow(err, origin) from None


def _link_from_text(text: str, origin: str) -> LinkProfile:
    kwargs = parse_link(read_toml(text, origin), origin)
    try:
        return LinkProfile.from_quantities(**kwargs)
    except ProfileError as err:
        raise _rethrow(err, origin) from None


def load_profile(path: str | os.PathLike[str]) -> DeviceProfile:
    """Read a device profile from your own TOML file (same format as the bundled ones)."""
    return _device_from_text(*read_path(path))


def load_link(path: str | os.PathLike[str]) -> LinkProfile:
    """Read a link profile from your own TOML file (same format as the bundled ones)."""
    return _link_from_text(*read_path(path))


def _bundled(folder: str, build: Any) -> dict[str, Any]:
    """Profiles shipped in ``odtkit/hardware/profiles/<folder>``, keyed by name (sorted)."""
    root = resources.files("odtkit.hardware")
    for part in folder.split("/"):
        root = root.joinpath(part)
    table: dict[str, Any] = {}
    taken: dict[str, str] = {}  # normalized name or alias -> profile name
    for entry in sorted(root.iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".toml"):
            continue
        profile = build(entry.read_text(encoding="utf-8"), f"odtkit/{folder}/{entry.name}")
        for key in (profile.name, *profile.aliases):
            if taken.setdefault(normalize_name(key), profile.name) != profile.name:
                raise ProfileError(f"name {key!r} is used twice", path=f"odtkit/{folder}")
        table[profile.name] = profile
    return table


@functools.cache
def _devices() -> dict[str, DeviceProfile]:
    return _bundled("profiles", _device_from_text)


@functools.cache
def _links() -> dict[str, LinkProfile]:
    return _bundled("profiles/links", _link_from_text)


@functools.cache
def _aliases(table_of: Any) -> dict[str, str]:
    """Normalized alias -> profile name of the bundled profiles ``table_of()`` returns."""
    return {normalize_name(a): p.name for p in table_of().values() for a in p.aliases}


def devices(kind: str | None = None) -> list[str]:
    """Names of the bundled devices, sorted; only those of ``kind`` when given."""
    if kind is not None:
        check_choice("device kind", kind, KINDS)
    return [name for name, p in _devices().items() if kind in (None, p.kind)]


def links() -> list[str]:
    """Names of the bundled links, sorted."""
    return list(_links())


def _find(kind: str, name: Any, table_of: Any) -> Any:
    """The bundled profile ``name`` means: a name or alias, case and separators ignored
    (``lookup``); else UnknownNameError suggesting the closest names (a prefix first)."""
    if not isinstance(name, str):
        raise TypeError(f"{kind} name must be a string, got {type(name).__name__} {name!r}")
    table = table_of()
    key = _aliases(table_of).get(normalize_name(name), name)
    try:
        return table[lookup(kind, key, table)]
    except ValueError as err:
        raise UnknownNameError(str(err)) from None


def _is_toml(name: str) -> bool:
    return name.lower().endswith(".toml")


def device(name: str | DeviceProfile | os.PathLike[str]) -> DeviceProfile:
    """A bundled device by name, forgiving about case and separators ('STM32 F746');
    a path ending in .toml loads your own profile; a DeviceProfile is returned as is."""
    if isinstance(name, DeviceProfile):
        return name
    if isinstance(name, os.PathLike) or (isinstance(name, str) and _is_toml(name)):
        return load_profile(name)
    return _find("device", name, _devices)


def link(name: str | LinkProfile | os.PathLike[str]) -> LinkProfile:
    """A bundled link by name ('LoRaWAN', 'nb-iot'); a .toml path loads your own."""
    if isinstance(name, LinkProfile):
        return name
    if isinstance(name, os.PathLike) or (isinstance(name, str) and _is_toml(name)):
        return load_link(name)
    return _find("link", name, _links)
