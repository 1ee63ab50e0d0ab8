"""Figures of sparse updates: which tensors a plan trains per layer, and what accuracy a
plan buys for its training memory.

    rows = plan_rows(plan)                      # per conv/linear layer: bias, weight share
    fig = sparse_plan_layers(plan)              # the plan drawn per layer
    fig = accuracy_vs_memory({"bias-only": (118_000, 0.61)}, predicted={"searched":
                             (150_000, 0.70)}, budget_bytes=160_000)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from ..units import format_bytes
from .memory import _scale
from .quant import short_layer_name

__all__ = ["PlanRow", "plan_rows", "sparse_plan_layers", "accuracy_vs_memory"]

_TRAINED, _FROZEN = "#C44E52", "#BBBBBB"


@dataclass(frozen=True)
class PlanRow:
    """One conv/linear layer of a plan: its name, whether a bias of it (its own, or of the
    norm right after it) trains (None: it has none), the share of its weight's entries
    that train and the channels they are (``channels`` of ``of_channels``)."""

    layer: str
    bias: bool | None
    weight_share: float
    channels: int
    of_channels: int


def _module(name: str) -> str:
    return name.rsplit(".", 1)[0] if "." in name else ""


def plan_rows(plan: Any) -> list[PlanRow]:
    """The rows ``sparse_plan_layers`` draws, in the plan's parameter order: one per
    parameter named ``*.weight`` with two or more dims (a conv or Linear); a norm's bias
    (a module with one-dimensional parameters only) belongs to the layer before it."""
    if not all(hasattr(plan, a) for a in ("names", "shapes", "trainable", "channels")):
        raise TypeError(f"plan must be a TrainPlan (odt.plan or odt.sparse.plan), got "
                        f"{type(plan).__name__}")
    shapes = dict(zip(plan.names, plan.shapes, strict=True))
    selected = {n: (dim, len(idx)) for n, dim, idx in plan.channels}
    rows: list[dict[str, Any]] = []
    modules: dict[str, list[str]] = {}
    for name in plan.names:
        modules.setdefault(_module(name), []).append(name)
    for module, params in modules.items():
        weight = f"{module}.weight" if module else "weight"
        if weight in shapes and len(shapes[weight]) >= 2:
            rows.append(_row(module, weight, shapes[weight], plan.trainable, selected))
        elif not rows or any(len(shapes[p]) >= 2 for p in params):
            continue
        biases = [p for p in params if p.rsplit(".", 1)[-1] == "bias"]
        if biases:
            trained = any(p in plan.trainable for p in biases)
            rows[-1]["bias"] = bool(rows[-1]["bias"]) or trained
    return [PlanRow(**r) for r in rows]


def _row(module: str, weight: str, shape: tuple[int, ...], trainable: Any,
         selected: Mapping[str, tuple[int, int]]) -> dict[str, Any]:
    dim, count = selected.get(weight, (1 if shape[1] > 1 else 0, None))
    of = shape[dim]
    if weight not in trainable:
        count, share = 0, 0.0
    elif count is None:
        count, share = of, 1.0
    else:
        share = count / of
    return {"layer": module, "bias": None, "weight_share": share, "channels": count,
            "of_channels": of}


def sparse_plan_layers(plan: Any, *, title: str | None = None,
                       figsize: tuple[float, float] | None = None) -> Figure:
    """The plan drawn per layer, top to bottom in forward order: a square for the bias
    (filled: trains, hollow: frozen) and a bar for the share of the weight's channels
    that train, labelled with their count."""
    rows = plan_rows(plan)
    if not rows:
        raise ValueError("the plan has no conv or linear weight to draw")
    n = len(rows)
    height = figsize[1] if figsize else min(7.5, 1.0 + 0.21 * n)
    fig, (left, right) = plt.subplots(1, 2, sharey=True, gridspec_kw={
        "width_ratios": [1, 7], "wspace": 0.04}, figsize=(figsize[0] if figsize else 4.6,
                                                         height))
    y = np.arange(n)
    shares = [r.weight_share for r in rows]
    right.barh(y, shares, 0.7, color=[_TRAINED if s > 0 else _FROZEN for s in shares])
    for yi, r in zip(y, rows, strict=True):
        if r.channels:
            right.text(min(r.weight_share, 1.0) + 0.02, yi, f"{r.channels}/{r.of_channels}",
                       va="center", fontsize=7)
    for yi, r in zip(y, rows, strict=True):
        if r.bias is not None:
            left.plot(0, yi, "s", markersize=5, color=_TRAINED if r.bias else "white",
                      markeredgecolor=_TRAINED if r.bias else "0.45")
    left.set_xlim(-0.5, 0.5)
    left.set_xticks([0], ["bias"], fontsize=7)
    left.set_yticks(y, [short_layer_name(r.layer) for r in rows], fontsize=7)
    left.set_ylim(n - 0.5, -0.5)
    right.set_xlim(0, 1.18)
    right.set_xticks([0, 0.25, 0.5, 0.75, 1.0], ["0", "¼", "½", "¾", "all"], fontsize=7)
    right.set_xlabel("share of the weight's channels that train", fontsize=8)
    right.tick_params(axis="y", left=False)
    right.grid(axis="x", alpha=0.3)
    trained = sum(1 for r in rows if r.weight_share > 0)
    biases = sum(1 for r in rows if r.bias)
    fig.suptitle(title if title is not None else
                 f"weights of {trained}, biases of {biases} of {n} layers train", fontsize=9)
    fig.subplots_adjust(left=0.2, right=0.97, top=1 - 0.35 / height, bottom=0.5 / height)
    return fig


def _points(points: Any, what: str, top: float = 1.0) -> dict[str, tuple[float, float]]:
    if points is None:
        return {}
    if not isinstance(points, Mapping):
        raise TypeError(f"{what} must be a dict {{label: (memory_bytes, accuracy)}}, got "
                        f"{type(points).__name__}")
    out = {}
    for label, value in points.items():
        try:
            memory, acc = (float(v) for v in value)
        except (TypeError, ValueError):
            raise TypeError(f"{what}[{label!r}] must be a pair (memory_bytes, accuracy), got "
                            f"{value!r}") from None
        if not (math.isfinite(memory) and memory >= 0 and 0.0 <= acc <= top):
            raise ValueError(f"{what}[{label!r}] = {value!r}: memory must be bytes >= 0 and "
                             f"accuracy a fraction in [0, {top:g}]")
        out[str(label)] = (memory, acc)
    return out


def accuracy_vs_memory(trained: Mapping[str, tuple[float, float]], *,
                       predicted: Mapping[str, tuple[float, float]] | None = None,
                       budget_bytes: float | None = None, budget_label: str = "budget",
                       baseline: float | None = None, title: str | None = None,
                       figsize: tuple[float, float] = (5.2, 3.4)) -> Figure:
    """Accuracy against training memory: ``trained`` plans as labelled dots (measured),
    ``predicted`` ones as stars, the budget as a dashed vertical line and the accuracy
    without training (``baseline``) as a dotted horizontal one. Points are {label:
    (memory_bytes, accuracy in [0, 1])}; a predicted accuracy may pass 1 (up to 2), as
    summed gains can; memory on a linear axis."""
    # summed gains (a model of accuracy, not a measurement) can pass 100%
    measured, guessed = _points(trained, "trained"), _points(predicted, "predicted", 2.0)
    if not measured and not guessed:
        raise ValueError("accuracy_vs_memory needs at least one trained or predicted point")
    xs_all = [m for m, _ in (*measured.values(), *guessed.values())]
    xs_all += [] if budget_bytes is None else [budget_bytes]
    top, bottom = max(xs_all), min(xs_all)
    size, unit = _scale(top)
    fig, ax = plt.subplots(figsize=figsize)
    for points, style in ((measured, {"marker": "o", "color": "#4C72B0", "s": 28}),
                          (guessed, {"marker": "*", "color": "#DD8452", "s": 110})):
        if not points:
            continue
        xs = [m / size for m, _ in points.values()]
        ys = [100 * a for _, a in points.values()]
        kind = "measured" if points is measured else "predicted"
        ax.scatter(xs, ys, zorder=3, label=kind, **style)
        for (label, _), xi, yi in zip(points.items(), xs, ys, strict=True):
            ax.annotate(label, (xi, yi), textcoords="offset points", xytext=(5, 3),
                        fontsize=7, color=style["color"])
    if budget_bytes is not None:
        ax.axvline(budget_bytes / size, color="black", linestyle="--", linewidth=1,
                   label=f"{budget_label} {format_bytes(budget_bytes)}")
    if baseline is not None:
        ax.axhline(100 * baseline, color="0.5", linestyle=":", linewidth=1,
                   label=f"no training {100 * baseline:.1f}%")
    span = max(top - bottom, 0.1 * top)  # the points' range, with room for their labels
    ax.set_xlim(max(0.0, bottom - 0.15 * span) / size, (top + 0.4 * span) / size)
    ax.set_xlabel(f"training memory, peak ({unit})")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="x-small", loc="best")
    ax.set_title(title if title is not None else "accuracy against training memory",
                 fontsize="medium")
    fig.tight_layout()
    return fig
