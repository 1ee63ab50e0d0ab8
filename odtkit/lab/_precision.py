"""Lab 02's precision table: one row per training variant, with memory and roofline time.

    row = precision_row("fp16", model, x, plan, optimizer="sgd-m", accuracy=0.55)
    print(format_precision_table([row, ...]))

Memory comes from ``odt.estimate`` where it models the precision, else from
``odt.measure`` (``rss=False``: storage counting only, the same bytes on every run); where
both refuse, the row keeps no number and the refusal's reason. Step times are
``device.fit(report).step_time_s``; where a device has no peak for the precision's profile
dtype the cell names the missing peak instead of a number, and the device's notes are
printed under the table. A cell adds "does not fit" where the step's peak memory exceeds
the device's RAM (or flash, for frozen weights on a microcontroller).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..quant.precision import precision_info
from ..units import format_bytes, format_seconds

DEVICES = ("stm32f746", "raspberry-pi-4")


@dataclass(frozen=True)
class PrecisionRow:
    """One variant: accuracy, peak memory of a step and how it was counted, step times.

    ``memory_how`` is "estimate", "measure" or "refused" (then ``memory_bytes`` is None and
    ``refusal`` holds the reason). ``step_s`` maps a device name to its roofline step time
    (None where unknown), ``cells`` to what the table shows, ``notes`` to the fit's notes.
    """

    label: str
    precision: str
    accuracy: float
    memory_bytes: int | None
    memory_how: str
    refusal: str = ""
    step_s: dict[str, float | None] = field(default_factory=dict)
    cells: dict[str, str] = field(default_factory=dict)
    notes: dict[str, tuple[str, ...]] = field(default_factory=dict)


def step_memory(model: nn.Module, example: torch.Tensor, plan: Any,
                optimizer: str = "sgd-m") -> tuple[Any, str, str]:
    """``(report, how, reason)``: estimate's report if it models the plan's precision, else
    measure's, else ``(None, "refused", both refusals)``. Only ValueErrors (a refused
    precision) fall through; anything else propagates."""
    from ..memory import estimate, measure

    reasons = []
    try:
        return estimate(model, example, plan, optimizer=optimizer), "estimate", ""
    except ValueError as err:
        reasons.append(f"estimate: {err}")
    try:
        return measure(model, example, plan, optimizer=optimizer, rss=False), "measure", ""
    except ValueError as err:
        reasons.append(f"measure: {err}")
    if reasons[0][len("estimate: "):] == reasons[1][len("measure: "):]:
        reasons = [f"estimate and measure: {reasons[0][len('estimate: '):]}"]
    return None, "refused", "; ".join(reasons)


def step_cell(device: Any, precision: str, step_s: float | None) -> str:
    """What the table shows for one device: the time, "no <dtype> peak" where the device
    has no peak for the precision's profile dtype, else "—" (no report to time)."""
    if step_s is not None:
        return format_seconds(step_s)
    dtype = precision_info(precision).profile_dtype
    if dtype not in device.peak_macs_per_s:
        return f"no {dtype} peak"
    return "—"


def precision_row(label: str, model: nn.Module, example: torch.Tensor, plan: Any, *,
                  optimizer: str = "sgd-m", accuracy: float,
                  devices: Iterable[str] = DEVICES) -> PrecisionRow:
    """The row of one variant: ``model`` before training (a copy is counted; ``model`` is
    left untouched), ``example`` one input batch, ``plan`` the plan it trains with."""
    from ..hardware import device as get_device

    report, how, reason = step_memory(model, example, plan, optimizer)
    precision = plan.precision
    step_s: dict[str, float | None] = {}
    cells: dict[str, str] = {}
    notes: dict[str, tuple[str, ...]] = {}
    fits: dict[str, bool] = {}
    for name in devices:
        dev = get_device(name)
        if report is None:
            step_s[name], notes[name] = None, ()
        else:
            fit = dev.fit(report)
            step_s[name], notes[name] = fit.step_time_s, tuple(fit.notes)
            fits[name] = fit.fits
        cells[name] = step_cell(dev, precision, step_s[name])
        if fits.get(name) is False:
            cells[name] += ", does not fit"
    return PrecisionRow(label, precision, float(accuracy),
                        None if report is None else int(report.peak_bytes), how, reason,
                        step_s, cells, notes)


def format_precision_table(rows: Sequence[PrecisionRow]) -> str:
    """The table, then every refusal and every distinct device note under it."""
    if not rows:
        raise ValueError("rows is empty: pass the PrecisionRow of each variant")
    devices = list(rows[0].cells)
    memory = ["—" if r.memory_bytes is None else f"{format_bytes(r.memory_bytes)} ({r.memory_how})"
              for r in rows]
    w_label = max(8, *(len(r.label) for r in rows))
    w_mem = max(len("peak memory (how)"), *(len(m) for m in memory))
    w_dev = {d: max(len(f"{d} step"), *(len(r.cells[d]) for r in rows)) for d in devices}
    lines = [f"{'variant':<{w_label}}  {'test acc':>8}  {'peak memory (how)':<{w_mem}}  "
             + "  ".join(f"{d + ' step':<{w_dev[d]}}" for d in devices)]
    for r, mem in zip(rows, memory, strict=True):
        lines.append(f"{r.label:<{w_label}}  {r.accuracy:>8.1%}  {mem:<{w_mem}}  "
                     + "  ".join(f"{r.cells[d]:<{w_dev[d]}}" for d in devices))
    below = [f"— {r.label}: memory refused by {r.refusal}" for r in rows if r.memory_bytes is None]
    seen: dict[tuple[str, str], list[str]] = {}
    for r in rows:
        for d in devices:
            for note in r.notes.get(d, ()):
                seen.setdefault((d, note), []).append(r.label)
    below += [f"{d} ({', '.join(labels)}): {note}" for (d, note), labels in seen.items()]
    return "\n".join(lines + ([""] + below if below else []))
