"""Does one training step fit a device? Memory checks plus a roofline step time.

An integer is bytes that need RAM: SRAM on a microcontroller, DRAM elsewhere.
A report's bytes are those of its precision (an int8 report counts int8 weights at one
byte per element), and its step time uses the peak of the unit that precision computes
on (``odt.quant.precision_info(p).profile_dtype``: int8, fp16 or fp32), with a note
where that unit is a stand-in or the device has none.
A memory report (anything with ``peak_bytes``, ``by_category``,
``frozen_weight_bytes``, ``forward_macs`` and ``backward_macs``) is split on a
microcontroller: weights that do not train can be read straight from flash,
so flash must hold them and SRAM the rest of the peak.

Which peak (``FitReport.peak``): on a device that runs PyTorch's CPU kernels (phone,
single-board computer, laptop, GPU module), the allocator's peak where the report has one
(``allocator_peak_bytes``: kernel scratch included, as torch.profiler counts it), since
the tensor peak runs short by that scratch; on a microcontroller the tensor peak, since
its kernels are not PyTorch's and bring scratch of their own.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field
from typing import Any

from .._checks import check_choice, check_int
from ..units import format_bytes, format_seconds
from ._profiles import DTYPES, UnknownSpecError

MEMORIES = ("sram", "dram", "flash")
PEAKS = ("tensor", "allocator")  # which peak of a report a fit checks
_LABELS = {"transient": "transient buffers (the input and output of the op being computed)"}
# what to try when a component of the peak is what breaks the budget
REMEDIES = {
    "weights": "a smaller model, or int8 weights (odt.quant.to_int8)",
    "saved activations": "train fewer layers (bias-only, last:K) with engine='lean', a "
                         "smaller batch or resolution, or recompute blocks (the plan's "
                         "recompute)",
    "transient": "a smaller batch or input resolution (both shrink every layer's input "
                 "and output)",
    "gradients": "train fewer tensors (bias-only, last:K, a channel-sparse plan)",
    "optimizer state": "an optimizer with less state (sgd keeps none, sgd-m one copy of the "
                       "trained weights, adam two) or fewer trained tensors",
    "kernel scratch": "a smaller batch or input resolution (the kernels' scratch grows with "
                      "their inputs)",
}


@dataclass(frozen=True)
class MemoryCheck:
    """One memory of a device against what a step needs from it."""

    memory: str
    needed_bytes: int
    available_bytes: int

    def __post_init__(self) -> None:
        check_choice("memory", self.memory, MEMORIES)
        for name in ("needed_bytes", "available_bytes"):
            _whole(getattr(self, name), f"MemoryCheck.{name}")

    @property
    def headroom_bytes(self) -> int:
        """Free bytes left over; negative when the need does not fit."""
        return self.available_bytes - self.needed_bytes

    @property
    def fits(self) -> bool:
        return self.headroom_bytes >= 0

    def describe(self) -> str:
        """'SRAM 200 KiB of 320 KiB (120 KiB free)' or '... (80 KiB short)'."""
        spare = self.headroom_bytes
        tail = f"{format_bytes(spare)} free" if spare >= 0 else f"{format_bytes(-spare)} short"
        return (f"{self.memory.upper() if self.memory != 'flash' else 'flash'} "
                f"{format_bytes(self.needed_bytes)} of {format_bytes(self.available_bytes)} "
                f"({tail})")


@dataclass(frozen=True)
class FitReport:
    """Whether a need fits a device. The top-level numbers are the tightest memory's.

    ``checks`` holds every memory that was checked (SRAM and flash on an MCU
    whose frozen weights sit in flash); ``memory``, ``needed_bytes``,
    ``available_bytes`` and ``headroom_bytes`` repeat the one with the least
    headroom, so ``headroom_bytes < 0`` exactly when ``fits`` is False.
    """

    device: str
    fits: bool
    memory: str
    needed_bytes: int
    available_bytes: int
    headroom_bytes: int
    checks: tuple[MemoryCheck, ...]
    largest_category: str | None = None
    step_time_s: float | None = None
    dtype: str | None = None
    notes: tuple[str, ...] = field(default=())
    peak: str | None = None  # "allocator" or "tensor" for a report; None for a byte count
    # what the working memory (SRAM or DRAM) holds at the peak, by component of the
    # report's peak_components (weights in flash left out, kernel scratch added where the
    # allocator peak is checked); they sum to that check's needed bytes. Empty for a byte
    # count or a report without components (a measurement)
    peak_components: dict[str, int] = field(default_factory=dict)
    peak_at: str = ""  # where the peak is, e.g. "backward of conv1 (convolution)"

    def __post_init__(self) -> None:
        if self.peak is not None:
            check_choice("peak", self.peak, PEAKS)
        if not self.checks or not all(isinstance(c, MemoryCheck) for c in self.checks):
            raise ValueError("FitReport needs at least one MemoryCheck in checks")
        tight = min(self.checks, key=lambda c: c.headroom_bytes)
        if (self.memory, self.needed_bytes, self.available_bytes, self.headroom_bytes) != (
            tight.memory, tight.needed_bytes, tight.available_bytes, tight.headroom_bytes
        ):
            raise ValueError("FitReport top-level numbers must repeat its tightest check")
        if self.fits != all(c.fits for c in self.checks):
            raise ValueError("FitReport.fits must be True exactly when every check fits")
        if self.step_time_s is not None and not self.step_time_s >= 0:
            raise ValueError(f"step_time_s must be >= 0 or None, got {self.step_time_s!r}")

    @property
    def verdict(self) -> str:
        """One line for a person: fits or not, by how much, and what dominates."""
        head = "fits" if self.fits else "does not fit"
        text = f"{head} {self.device}: " + ", ".join(c.describe() for c in self.checks)
        if self.peak == "allocator":  # the tensor peak, the usual one, goes unsaid
            text += " (allocator peak, kernel scratch included)"
        if self.peak_components:
            text += self._at_peak()
        elif self.largest_category:
            text += f"; largest category: {self.largest_category}"
        if self.step_time_s is not None:
            text += f"; one step ~{format_seconds(self.step_time_s)} ({self.dtype} roofline)"
        for note in self.notes:
            text += f"; {note}"
        return text

    @property
    def peak_component(self) -> str | None:
        """The largest component of the working memory at the peak (None without any)."""
        parts = self.peak_components
        return max(parts, key=parts.__getitem__) if parts else None

    def _at_peak(self) -> str:
        """'; at the peak (where) saved activations take A of the B; ...' and, when it does
        not fit, the budget, whether the rest alone would fit, and what to try."""
        ram = next(c for c in self.checks if c.memory != "flash")
        part = self.peak_component
        nbytes = self.peak_components[part]
        where = f" ({self.peak_at})" if self.peak_at else ""
        label = _LABELS.get(part, part)
        verb = "take" if label.split(" (")[0].endswith("s") else "takes"
        text = (f"; at the peak{where} {label} {verb} {format_bytes(nbytes)} of the "
                f"{format_bytes(ram.needed_bytes)} in {ram.memory.upper()}")
        if ram.fits:
            return text
        rest = ram.needed_bytes - nbytes
        text += (f"; the budget is {format_bytes(ram.available_bytes)}, the rest alone "
                 f"({format_bytes(rest)}) {'fits' if rest <= ram.available_bytes else 'does not'}")
        return text + f"; try {REMEDIES.get(part, 'a smaller batch or model')}"

    def __str__(self) -> str:
        return self.verdict


def _whole(value: Any, what: str) -> int:
    """``value`` as an int if it is a whole number of bytes >= 0 (``check_int``), else a
    ValueError that says so."""
    try:
        return check_int(what, value, low=0)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{err}: a whole number of bytes >= 0 (round a float with "
                         "int(...))") from None


def ram_of(device: Any) -> tuple[str, int]:
    """The working memory a step lives in: SRAM on an MCU, DRAM elsewhere."""
    memory = "sram" if device.kind == "mcu" else "dram"
    available = getattr(device, f"{memory}_bytes")
    if available is None:
        raise UnknownSpecError(f"{device.name} has no known {memory}_bytes to check against")
    return memory, available


def step_bytes_moved(by_category: dict[str, int]) -> int:
    """Bytes one step moves: every byte of every category written once and read once."""
    return 2 * sum(by_category.values())


def fit_device(device: Any, need: Any, *, dtype: str | None = None,
               weights_in_flash: bool | None = None) -> FitReport:
    """Build the FitReport of ``device.fit`` (see DeviceProfile.fit)."""
    if dtype is not None:
        check_choice("dtype", dtype, DTYPES)
    ram, ram_bytes = ram_of(device)
    if isinstance(need, numbers.Integral) and not isinstance(need, bool):
        if weights_in_flash:
            raise ValueError("weights_in_flash needs a memory report (frozen_weight_bytes), "
                             "not a plain byte count")
        check = MemoryCheck(ram, _whole(need, "needed bytes"), ram_bytes)
        return _report(device, (check,), None, None, None, ())
    if not hasattr(need, "peak_bytes"):
        raise TypeError(
            f"fit() takes a whole number of bytes or a memory report with peak_bytes, "
            f"by_category, frozen_weight_bytes, forward_macs and backward_macs; "
            f"got {type(need).__name__}"
        )
    peak = _whole(need.peak_bytes, "report.peak_bytes")
    frozen = _whole(getattr(need, "frozen_weight_bytes", 0) or 0, "report.frozen_weight_bytes")
    if frozen > peak:
        raise ValueError(f"report.frozen_weight_bytes ({frozen}) exceeds peak_bytes ({peak})")
    which = "tensor"
    allocator = getattr(need, "allocator_peak_bytes", None)
    if allocator is not None and device.kind != "mcu":
        peak = max(peak, _whole(allocator, "report.allocator_peak_bytes"))
        which = "allocator"
    by_category = {str(k): _whole(v, f"by_category[{k!r}]")
                   for k, v in dict(getattr(need, "by_category", {}) or {}).items()}
    largest = max(by_category, key=by_category.__getitem__) if by_category else None
    notes: list[str] = []
    if weights_in_flash and device.kind != "mcu":
        raise ValueError(f"{device.name} is a {device.kind}: only microcontrollers run weights "
                         "from flash. Leave weights_in_flash unset.")
    if weights_in_flash and device.flash_bytes is None:
        raise UnknownSpecError(f"{device.name} has no known flash_bytes to hold frozen weights")
    use_flash = weights_in_flash
    if use_flash is None:
        use_flash = device.kind == "mcu" and device.flash_bytes is not None
        if device.kind == "mcu" and device.flash_bytes is None and frozen:
            notes.append("flash size unknown, so frozen weights are counted in SRAM")
    if use_flash and frozen:
        checks = (MemoryCheck(ram, peak - frozen, ram_bytes),
                  MemoryCheck("flash", frozen, device.flash_bytes))
    else:
        checks = (MemoryCheck(ram, peak, ram_bytes),)
    step, used = _step_time(device, need, by_category, dtype, notes)
    parts = _ram_components(need, checks[0].needed_bytes, frozen if use_flash else 0)
    return _report(device, checks, largest, step, used, tuple(notes), which,
                   parts, str(getattr(need, "peak_at", "") or "") if parts else "")


def _ram_components(need: Any, ram_bytes: int, in_flash: int) -> dict[str, int]:
    """The report's peak components as the working memory holds them: the weights read
    from flash taken out of "weights", the allocator's kernel scratch added; {} where the
    report has none or they do not add up to what the RAM check needs."""
    parts = {str(k): _whole(v, f"peak_components[{k!r}]")
             for k, v in dict(getattr(need, "peak_components", {}) or {}).items()}
    if not parts or "weights" not in parts or parts["weights"] < in_flash:
        return {}
    parts["weights"] -= in_flash
    scratch = ram_bytes - sum(parts.values())
    if scratch > 0:
        parts["kernel scratch"] = scratch
    return parts if sum(parts.values()) == ram_bytes else {}


def _profile_dtype(report: Any, notes: list[str]) -> str:
    """The peak a report's step runs at: its precision's arithmetic unit in the profile
    (``precision_info(...).profile_dtype``), fp32 for a report without a precision."""
    precision = getattr(report, "precision", None)
    if precision is None:
        return "fp32"
    from ..quant import precision_info

    info = precision_info(precision)
    if info.profile_note:
        notes.append(f"{info.name} step time at the {info.profile_dtype} peak: "
                     f"{info.profile_note}")
    return info.profile_dtype


def _step_time(device: Any, report: Any, by_category: dict[str, int], dtype: str | None,
               notes: list[str]) -> tuple[float | None, str | None]:
    used = dtype if dtype is not None else _profile_dtype(report, notes)
    forward = getattr(report, "forward_macs", None)
    backward = getattr(report, "backward_macs", None)
    if forward is None or backward is None:
        notes.append("step time unknown: the report has no MAC counts")
        return None, None
    try:
        seconds = device.roofline_s(forward + backward, step_bytes_moved(by_category), used)
    except UnknownSpecError as err:
        notes.append(f"step time unknown: {err}")
        return None, None
    return seconds, used


def _report(device: Any, checks: tuple[MemoryCheck, ...], largest: str | None,
            step: float | None, used: str | None, notes: tuple[str, ...],
            peak: str | None = None, parts: dict[str, int] | None = None,
            peak_at: str = "") -> FitReport:
    tight = min(checks, key=lambda c: c.headroom_bytes)
    return FitReport(
        device=device.name,
        fits=all(c.fits for c in checks),
        memory=tight.memory,
        needed_bytes=tight.needed_bytes,
        available_bytes=tight.available_bytes,
        headroom_bytes=tight.headroom_bytes,
        checks=checks,
        largest_category=largest,
        step_time_s=step,
        dtype=used,
        notes=notes,
        peak=peak,
        peak_components=parts or {},
        peak_at=peak_at,
    )
