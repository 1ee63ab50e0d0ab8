"""Figures: the hardware catalogue, from KB of SRAM to GB of DRAM, and fit comparisons."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import matplotlib.pyplot as plt
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

from .. import hardware
from ..hardware import DeviceProfile, FitReport, device
from ..units import format_bytes

__all__ = ["device_comparison", "memory_catalogue"]

MEMORY_COLOURS = {"sram": "#2a6f97", "dram": "#d4a017", "flash": "#5a8f4e"}
MEMORY_MARKERS = {"sram": "o", "dram": "s", "flash": "^"}
FITS_COLOUR, MISSES_COLOUR, AVAILABLE_COLOUR = "#2a9d8f", "#e76f51", "#d9d9d9"


def _byte_axis(ax: Any, low: float, high: float, *, room: float = 2.0) -> None:
    """A log x-axis from ``low`` to ``high`` with power-of-two ticks in binary units."""
    ax.set_xscale("log")
    lo_bits, hi_bits = math.floor(math.log2(low / 2)), math.ceil(math.log2(high * room))
    step = next(s for s in (1, 2, 5, 10, 20) if (hi_bits - lo_bits) / s <= 8)
    first = math.ceil(lo_bits / step) * step
    ax.xaxis.set_major_locator(FixedLocator([2.0**b for b in range(first, hi_bits + 1, step)]))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: format_bytes(x)))
    ax.set_xlim(2.0**lo_bits, 2.0**hi_bits)


def memory_catalogue(devices: Iterable[str | DeviceProfile] | None = None) -> Figure:
    """SRAM, DRAM and flash per device as points on a log axis: the 'KB to GB' picture.

    Points, not bars: on a log axis a bar's length means nothing, a point's position reads
    as its size. A memory the device does not have (0) draws nothing; one whose size is not known
    (None: no source gives it) is written "? unknown" in its row, so no device silently
    loses a bar. With ``devices=None`` all bundled devices appear, smallest working memory
    at the top.
    """
    profiles = [device(d) for d in (devices if devices is not None else hardware.devices())]
    if not profiles:
        raise ValueError("memory_catalogue needs at least one device")
    if devices is None:
        profiles.sort(key=lambda p: (p.dram_bytes or 0) or (p.sram_bytes or 0))
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(profiles) + 1.5))
    height = 0.26
    values: list[float] = []
    unknown: list[tuple[int, float, str]] = []
    for offset, memory in zip((-height, 0.0, height), MEMORY_COLOURS, strict=True):
        label = memory.upper() if memory != "flash" else "flash"
        sizes = [(i, getattr(p, f"{memory}_bytes")) for i, p in enumerate(profiles)]
        unknown += [(i, offset, label) for i, v in sizes if v is None]
        rows = [(i, v) for i, v in sizes if v]  # 0 (the device has none) draws nothing
        values += [v for _, v in rows]
        ax.plot([v for _, v in rows], [i + offset for i, _ in rows], linestyle="none",
                marker=MEMORY_MARKERS[memory], markersize=7, color=MEMORY_COLOURS[memory],
                label=label)
        for i, v in rows:
            ax.text(v * 1.35, i + offset, format_bytes(v), va="center", fontsize=8)
    if not values:
        plt.close(fig)
        raise ValueError("none of these devices has a known SRAM, DRAM or flash size")
    _byte_axis(ax, min(values), max(values), room=16.0)
    left = ax.get_xlim()[0]
    for i, offset, label in unknown:  # at the axis' left edge, where a bar would start
        ax.text(left * 1.15, i + offset, f"{label} ? unknown", va="center", fontsize=8,
                color="#6c757d", fontstyle="italic")
    ax.set_yticks(range(len(profiles)), [p.name for p in profiles])
    ax.invert_yaxis()
    ax.set_xlabel("bytes (log scale)")
    ax.set_title("Memory per device: on-chip SRAM, off-chip DRAM, flash (? size not known)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


def _fit_reports(fits: Any, targets: Iterable[str | DeviceProfile] | None) -> list[FitReport]:
    """FitReports from: reports; a mapping device -> need or FitReport; or one need + devices."""
    if isinstance(fits, FitReport):
        return [fits]
    if isinstance(fits, Mapping):
        out = []
        for name, need in fits.items():
            out.append(need if isinstance(need, FitReport) else device(name).fit(need))
        return out
    if isinstance(fits, int) or hasattr(fits, "peak_bytes"):
        names = targets if targets is not None else hardware.devices()
        return [device(d).fit(fits) for d in names]
    reports = list(fits)
    for item in reports:
        if not isinstance(item, FitReport):
            raise TypeError(f"expected FitReport objects, got {type(item).__name__}; pass a "
                            "mapping {device name: memory report} to fit them first")
    return reports


def device_comparison(fits: Any, *,
                      devices: Iterable[str | DeviceProfile] | None = None) -> Figure:
    """Needed vs available memory per device, green where it fits and red where not.

    ``fits`` is a list of FitReports, a mapping {device name: memory report, bytes or
    FitReport}, or one report / byte count checked against ``devices`` (default: all).
    Each memory checked (SRAM and flash on an MCU) gets a row: a grey bar for what the
    device has and a coloured one for what the step needs.
    """
    reports = _fit_reports(fits, devices)
    if not reports:
        raise ValueError("device_comparison needs at least one fit report")
    rows = [(r, c) for r in reports for c in r.checks]
    fig, ax = plt.subplots(figsize=(9, 0.4 * len(rows) + 1.5))
    y = range(len(rows))
    available = [max(c.available_bytes, 1) for _, c in rows]
    needed = [max(c.needed_bytes, 1) for _, c in rows]
    ax.barh(y, available, height=0.7, color=AVAILABLE_COLOUR)
    ax.barh(y, needed, height=0.35,
            color=[FITS_COLOUR if c.fits else MISSES_COLOUR for _, c in rows])
    ax.set_yticks(list(y), [f"{r.device} {c.memory}" for r, c in rows])
    ax.invert_yaxis()
    _byte_axis(ax, min(available + needed), max(available + needed))
    ax.set_xlabel("bytes (log scale)")
    ax.set_title("Needed vs available memory")
    ax.legend(handles=[Patch(color=AVAILABLE_COLOUR, label="available"),
                       Patch(color=FITS_COLOUR, label="needed (fits)"),
                       Patch(color=MISSES_COLOUR, label="needed (does not fit)")],
              loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig
