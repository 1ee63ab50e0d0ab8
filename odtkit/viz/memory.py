"""Figures of training memory: categories, what is live at the peak, bytes kept per layer,
live bytes through a step.

Every function takes MemoryReports (odt.estimate / odt.measure) and returns a Figure.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from .._checks import check_positive_int
from ..units import format_bytes

__all__ = ["memory_bars", "peak_bars", "saved_bytes_per_layer", "memory_timeline"]

# one colour per category of a MemoryReport, in its order
_COLORS = {"weights": "#4C72B0", "gradients": "#DD8452", "optimizer": "#55A868",
           "activations": "#C44E52"}
# one colour and hatch per component of what is live at the peak (MemoryReport and
# FitReport peak_components), the categories' colours where they mean the same bytes
PEAK_COLORS = {"weights": "#4C72B0", "saved activations": "#C44E52", "transient": "#8172B3",
               "gradients": "#DD8452", "optimizer state": "#55A868",
               "kernel scratch": "#937860"}
_PEAK_HATCH = {"weights": "", "saved activations": "//", "transient": "..", "gradients": "\\\\",
               "optimizer state": "xx", "kernel scratch": "--"}
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
PHASES = ("forward", "loss", "backward", "step")
_PHASE_WIDTH = {"forward": 0.45, "loss": 0.05, "backward": 0.42, "step": 0.08}


def _scale(max_bytes: float) -> tuple[float, str]:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if max_bytes >= size:
            return size, unit
    return 1.0, "B"


def _as_mapping(reports: Any, what: str) -> dict[str, Any]:
    """{label: report} from a mapping, a list or one report; checks they are reports."""
    if isinstance(reports, Mapping):
        items = dict(reports)
    elif hasattr(reports, "by_category"):
        items = {_default_label(reports): reports}
    elif isinstance(reports, Sequence) and not isinstance(reports, str):
        items = {}
        for r in reports:
            label = _default_label(r)
            items[label if label not in items else f"{label} #{len(items) + 1}"] = r
    else:
        raise TypeError(f"{what} takes MemoryReports (a dict label -> report, a list or one "
                        f"report), got {type(reports).__name__}")
    if not items:
        raise ValueError(f"{what} needs at least one MemoryReport")
    for label, r in items.items():
        if not hasattr(r, "by_category") or not hasattr(r, "peak_bytes"):
            raise TypeError(f"{label!r} is a {type(r).__name__}, not a MemoryReport; pass "
                            "what odt.estimate or odt.measure returns")
    return items


def _default_label(report: Any) -> str:
    return f"{getattr(report, 'scheme', '')} {getattr(report, 'engine', '')}".strip() or "report"


def memory_bars(reports: Any, *, budget_bytes: float | None = None, budget_label: str = "budget",
                title: str | None = None, figsize: tuple[float, float] = (6.5, 3.8)) -> Figure:
    """Stacked bars of the four categories per report, the peak as a black tick.

    ``reports``: {label: MemoryReport} (or a list); ``budget_bytes`` draws a dashed line,
    e.g. a device's SRAM.
    """
    items = _as_mapping(reports, "memory_bars")
    top = max(max(r.total_bytes, r.peak_bytes) for r in items.values())
    top = max(top, budget_bytes or 0)
    size, unit = _scale(top)
    fig, ax = plt.subplots(figsize=figsize)
    x = np.arange(len(items))
    bottom = np.zeros(len(items))
    for cat, color in _COLORS.items():
        values = np.array([r.by_category[cat] for r in items.values()]) / size
        ax.bar(x, values, 0.6, bottom=bottom, color=color, label=cat)
        bottom += values
    peaks = np.array([r.peak_bytes for r in items.values()]) / size
    ax.hlines(peaks, x - 0.4, x + 0.4, color="black", linewidth=2, zorder=3, label="peak")
    for xi, r in zip(x, items.values(), strict=True):
        ax.annotate(f"peak {format_bytes(r.peak_bytes)}", (xi, r.peak_bytes / size),
                    textcoords="offset points", xytext=(0, 3), ha="center", fontsize=8,
                    bbox={"facecolor": "white", "alpha": 0.7, "linewidth": 0, "pad": 1})
    if budget_bytes is not None:
        ax.axhline(budget_bytes / size, color="black", linestyle="--", linewidth=1)
        ax.annotate(f"{budget_label} {format_bytes(budget_bytes)}", (x[-1] + 0.4, budget_bytes / size),
                    textcoords="offset points", xytext=(0, 3), ha="right", fontsize=8)
    ax.set_xticks(x, list(items), rotation=20 if len(items) > 3 else 0, ha="right"
                  if len(items) > 3 else "center")
    ax.set_ylabel(f"memory ({unit})")
    ax.set_ylim(0, top / size * 1.15)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_title(title if title is not None else "training memory by category")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def _components(item: Any, label: str) -> dict[str, int]:
    parts = getattr(item, "peak_components", item)
    if not isinstance(parts, Mapping) or not parts:
        raise ValueError(f"{label!r} has no peak components: pass what odt.estimate or "
                         "device.fit returns, or a dict component -> bytes")
    return {str(k): int(v) for k, v in parts.items()}


def peak_bars(items: Mapping[str, Any], *, budget_bytes: float | None = None,
              budget_label: str = "budget", title: str | None = None,
              figsize: tuple[float, float] = (6.5, 3.6)) -> Figure:
    """What is live at the peak, one stacked bar per entry: its components (a report's or a
    fit's ``peak_components``, or a dict component -> bytes) add up to the black tick.

    ``items``: {label: report, fit or dict}; ``budget_bytes`` draws a dashed line.
    """
    if not isinstance(items, Mapping) or not items:
        raise TypeError("peak_bars takes a non-empty dict label -> MemoryReport, FitReport "
                        f"or dict of component bytes, got {type(items).__name__}")
    parts = {label: _components(item, label) for label, item in items.items()}
    peaks = np.array([sum(p.values()) for p in parts.values()], dtype=float)
    size, unit = _scale(max(peaks.max(), budget_bytes or 0))
    fig, ax = plt.subplots(figsize=figsize)
    x = np.arange(len(parts))
    bottom = np.zeros(len(parts))
    names = list(dict.fromkeys(k for p in parts.values() for k in p))
    for name in names:
        values = np.array([p.get(name, 0) for p in parts.values()]) / size
        ax.bar(x, values, 0.55, bottom=bottom, color=PEAK_COLORS.get(name, "0.6"),
               hatch=_PEAK_HATCH.get(name, ""), edgecolor="white", linewidth=0.5, label=name)
        bottom += values
    ax.hlines(peaks / size, x - 0.35, x + 0.35, color="black", linewidth=2, zorder=3,
              label="peak")
    for xi, peak in zip(x, peaks, strict=True):
        ax.annotate(f"peak {format_bytes(peak)}", (xi, peak / size), textcoords="offset points",
                    xytext=(0, 3), ha="center", fontsize=9)
    if budget_bytes is not None:
        ax.axhline(budget_bytes / size, color="black", linestyle="--", linewidth=1,
                   label=f"{budget_label} {format_bytes(budget_bytes)}")
    ax.set_xticks(x, list(parts))
    ax.set_ylabel(f"live at the peak ({unit})")
    ax.set_ylim(0, max(peaks.max(), budget_bytes or 0) / size * 1.18)
    handles, labels = ax.get_legend_handles_labels()
    # the stack's components top first, then the peak and the budget
    order = ([labels.index(name) for name in reversed(names)]
             + [i for i, label in enumerate(labels) if label not in names])
    ax.legend([handles[i] for i in order], [labels[i] for i in order], fontsize=9,
              loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_title(title if title is not None else "what is live at the peak")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def saved_bytes_per_layer(reports: Any, *, top: int | None = None, title: str | None = None,
                          figsize: tuple[float, float] = (7.5, 3.8)) -> Figure:
    """Bytes each layer keeps for backward: one report, or two side by side (stock vs lean).

    ``top``: show only the ``top`` layers keeping the most (in the first report).
    """
    items = _as_mapping(reports, "saved_bytes_per_layer")
    if len(items) > 2:
        raise ValueError(f"saved_bytes_per_layer compares at most two reports, got {len(items)}")
    first = next(iter(items.values()))
    names = [r.name for r in first.rows]
    if not names:
        raise ValueError("the report has no per-layer rows")
    per = [{r.name: r.saved_bytes for r in rep.rows} for rep in items.values()]
    if top is not None:
        check_positive_int("top", top)
        keep = set(sorted(names, key=lambda n: -max(p.get(n, 0) for p in per))[:top])
        names = [n for n in names if n in keep]
    size, unit = _scale(max(max(p.values(), default=0) for p in per) or 1)
    fig, ax = plt.subplots(figsize=figsize)
    y = np.arange(len(names))
    height = 0.8 / len(items)
    for k, (label, values) in enumerate(zip(items, per, strict=True)):
        total = items[label].by_category["activations"]
        ax.barh(y + (k - (len(items) - 1) / 2) * height, [values.get(n, 0) / size for n in names],
                height, label=f"{label} ({format_bytes(total)} in all)", color=f"C{3 * k}")
    ax.set_yticks(y, names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel(f"bytes kept for backward ({unit})")
    ax.legend(fontsize="small")
    ax.grid(axis="x", alpha=0.3)
    ax.set_title(title if title is not None else "activations kept per layer")
    fig.tight_layout()
    return fig


def _phase_positions(timeline: Sequence[tuple[str, int]]) -> tuple[np.ndarray, np.ndarray]:
    """x in [0, 1] for each event: each phase gets a fixed share, events spread evenly."""
    phases = [label.split(":", 1)[0] for label, _ in timeline]
    xs = np.zeros(len(timeline))
    start = 0.0
    for phase in PHASES:
        idx = [i for i, p in enumerate(phases) if p == phase]
        width = _PHASE_WIDTH[phase]
        for j, i in enumerate(idx):
            xs[i] = start + width * (j + 0.5) / len(idx)
        start += width
    return xs, np.array([b for _, b in timeline], dtype=float)


def memory_timeline(reports: Any, *, budget_bytes: float | None = None,
                    title: str | None = None, figsize: tuple[float, float] = (7.0, 3.6)) -> Figure:
    """Live bytes through one step (forward, loss, backward, optimizer step), one line per
    report, e.g. {"estimated": est, "measured": meas}; each phase gets the same share of x."""
    items = _as_mapping(reports, "memory_timeline")
    for label, r in items.items():
        if not getattr(r, "timeline", None):
            raise ValueError(f"{label!r} has no timeline to draw")
    size, unit = _scale(max([r.peak_bytes for r in items.values()] + [budget_bytes or 0]))
    fig, ax = plt.subplots(figsize=figsize)
    start = 0.0
    for k, phase in enumerate(PHASES):
        width = _PHASE_WIDTH[phase]
        if k % 2 == 0:
            ax.axvspan(start, start + width, color="0.93", zorder=0)
        ax.text(start + width / 2, 0.02, phase, transform=ax.get_xaxis_transform(), ha="center",
                va="bottom", fontsize=8, color="0.35")
        start += width
    for k, (label, r) in enumerate(items.items()):
        xs, ys = _phase_positions(r.timeline)
        marker = _MARKERS[k % len(_MARKERS)]
        ax.step(xs, ys / size, where="mid", color=f"C{k}", label=label,
                linestyle="-" if k == 0 else "--", linewidth=1.2, marker=marker,
                markersize=4, markevery=max(1, len(xs) // 12))
        i = int(np.argmax(ys))
        ax.plot(xs[i], ys[i] / size, marker, color=f"C{k}", markersize=6)
        ax.annotate(f"{label} peak {format_bytes(ys[i])}", (xs[i], ys[i] / size),
                    textcoords="offset points", xytext=(8, -4 - 11 * k), fontsize=8,
                    color=f"C{k}")
    if budget_bytes is not None:
        ax.axhline(budget_bytes / size, color="black", linestyle=":", linewidth=1)
    ax.set_xlim(0, 1)
    ax.set_xticks([])
    ax.set_ylim(0, None)
    ax.set_ylabel(f"live memory ({unit})")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_title(title if title is not None else "memory through one training step")
    fig.tight_layout()
    return fig
