"""Figures of compressed training: bytes against accuracy, curves, payload against wire
bytes, round time over links, PowerSGD rank sweeps and federated accuracy over time.

A run is a ``DistHistory`` (from ``odt.distributed.simulate``), a list of them (seeds:
the mean is plotted, the spread as an error bar) or a row of benchmarks/compress.json or
benchmarks/results/lab05.json. Figures are drawn to be read at the size a notebook shows
them: at most ``PER_PANEL`` series a plot (more runs are split over panels that share
their axes), each run with its own colour and marker, legend text of 9 pt (12 px at
100 dpi), and bars on linear axes with their values written beside them.
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from .._checks import check_positive_int
from ..units import format_bytes, format_seconds

__all__ = ["bytes_vs_accuracy", "compression_curves", "round_time_bars",
           "powersgd_rank_sweep", "accuracy_points", "federated_progress", "run_point",
           "wire_bytes_bars", "accuracy_against_dense"]

PER_PANEL = 7  # series per plot; more are split over panels
FONT_PT = 9  # legend and value labels
_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
            "#7f7f7f", "#bcbd22", "#17becf", "black", "#000080", "#b8860b", "#006400")
_MARKERS = ("o", "s", "D", "^", "v", "<", ">", "p", "h", "*", "X", "P", "d", "8")


def series_style(i: int) -> dict[str, str]:
    """Colour and marker of the i-th series of a figure: no two of the first 14 share
    either; beyond, the pair still differs from every earlier one."""
    n = len(_COLOURS)
    return {"color": _COLOURS[i % n], "marker": _MARKERS[(i + i // n) % len(_MARKERS)]}


def run_point(run: Any, name: str = "run") -> tuple[float, float, float]:
    """(bytes per worker per round, mean final accuracy, its std over seeds) of a run."""
    if isinstance(run, Mapping):
        try:
            sent = float(run["bytes_per_worker_per_round"])
            if "final_acc_mean" in run:
                return sent, float(run["final_acc_mean"]), float(run.get("final_acc_std", 0.0))
            finals = [float(a) for a in run["final_acc"]]
        except KeyError as err:
            raise ValueError(f"run {name!r} is a mapping without {err}; pass a DistHistory "
                             "or a row of benchmarks/compress.json") from None
        return sent, statistics.fmean(finals), statistics.pstdev(finals)
    runs = list(run) if isinstance(run, Sequence) else [run]
    if not runs:
        raise ValueError(f"run {name!r} is an empty list")
    for h in runs:
        if not getattr(h, "up_bytes_per_round", None) or not getattr(h, "test_acc", None):
            raise TypeError(f"run {name!r} holds a {type(h).__name__} without rounds and "
                            "epochs; pass what odt.distributed.simulate returns")
    sent = statistics.fmean(sum(h.up_bytes_per_round) / len(h.up_bytes_per_round) for h in runs)
    finals = [h.test_acc[-1] for h in runs]
    return sent, statistics.fmean(finals), statistics.pstdev(finals)


def _check(runs: Mapping[Any, Any]) -> None:
    if not runs:
        raise ValueError("nothing to plot: pass {'label': run, ...}")


def _panels(names: list[Any], per_panel: int, figsize: tuple[float, float]
            ) -> tuple[Figure, list[Any], list[list[Any]]]:
    """A figure with one panel per ``per_panel`` names (sharing both axes) and the names
    of each panel."""
    per_panel = check_positive_int("per_panel", per_panel)
    groups = [names[i:i + per_panel] for i in range(0, len(names), per_panel)]
    fig, axes = plt.subplots(1, len(groups), figsize=(figsize[0] * len(groups), figsize[1]),
                             squeeze=False, sharex=True, sharey=True)
    return fig, list(axes[0]), groups


def bytes_vs_accuracy(runs: Mapping[str, Any], *, dense_bytes: float | None = None,
                      title: str = "bytes per round against accuracy",
                      per_panel: int = PER_PANEL,
                      figsize: tuple[float, float] = (5.0, 4.2)) -> Figure:
    """Bytes one worker sends per round (log) against final test accuracy, one marker per
    run; more than ``per_panel`` runs are split over panels with the same axes."""
    _check(runs)
    names = list(runs)
    fig, axes, groups = _panels(names, per_panel, figsize)
    for ax, group in zip(axes, groups, strict=True):
        for name in group:
            sent, acc, std = run_point(runs[name], name)
            style = series_style(names.index(name))
            ax.errorbar(sent, 100 * acc, yerr=100 * std, fmt=style["marker"], ms=7,
                        capsize=3, label=name, color=style["color"])
        if dense_bytes:
            ax.axvline(dense_bytes, color="grey", ls=":", lw=1)
        ax.set_xscale("log")
        ax.set_xlabel("payload bytes per worker per round (log)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=FONT_PT, loc="lower left")
    axes[0].set_ylabel("final test accuracy (%)")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def _curve(run: Any, name: str) -> list[float]:
    if isinstance(run, Mapping):
        if "curve_seed0" not in run:
            raise ValueError(f"run {name!r} is a mapping without 'curve_seed0'; pass a "
                             "DistHistory or a row of benchmarks/compress.json")
        return list(run["curve_seed0"])
    return list((run[0] if isinstance(run, Sequence) else run).test_acc)


def compression_curves(runs: Mapping[str, Any], *, title: str = "test accuracy per epoch",
                       per_panel: int = PER_PANEL,
                       figsize: tuple[float, float] = (5.0, 3.8)) -> Figure:
    """Test accuracy per epoch, one line per compressor (first seed of a list); more than
    ``per_panel`` runs are split over panels with the same axes."""
    _check(runs)
    names = list(runs)
    fig, axes, groups = _panels(names, per_panel, figsize)
    for ax, group in zip(axes, groups, strict=True):
        for name in group:
            acc = _curve(runs[name], name)
            every = max(1, len(acc) // 6)
            ax.plot(range(1, len(acc) + 1), [100 * a for a in acc], label=name, lw=1.3,
                    markevery=every, ms=6, **series_style(names.index(name)))
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=FONT_PT, loc="lower right")
    axes[0].set_ylabel("test accuracy (%)")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def _value(run: Any, attr: str, key: str, name: str) -> float:
    if isinstance(run, Mapping):
        if key not in run:
            raise ValueError(f"run {name!r} is a mapping without {key!r}; pass a DistHistory "
                             "or a row of benchmarks/results/lab05.json")
        return float(run[key])
    values = getattr(run, attr, None)
    if not values:
        raise TypeError(f"run {name!r} has no wire bytes; pass what "
                        "odt.distributed.simulate returns")
    return statistics.fmean(values)


def _hbars(ax: Any, names: list[str], parts: list[tuple[str, list[float], str]],
           fmt: Any, stacked: bool) -> None:
    """Horizontal bars on a linear axis, side by side (or stacked), each group's value(s)
    written at the end of its bar."""
    height = 0.8 if stacked else 0.8 / len(parts)
    left = [0.0] * len(names)
    for j, (label, values, color) in enumerate(parts):
        ys = list(range(len(names))) if stacked else [
            i + (j - (len(parts) - 1) / 2) * height for i in range(len(names))]
        ax.barh(ys, values, height=height, left=left if stacked else None, color=color,
                label=label)
        if stacked:
            left = [a + b for a, b in zip(left, values, strict=True)]
        else:
            for y, v in zip(ys, values, strict=True):
                ax.annotate(f" {fmt(v)}", (v, y), va="center", fontsize=FONT_PT - 1)
    if stacked:
        for i, total in enumerate(left):
            ax.annotate(f" {fmt(total)}", (total, i), va="center", fontsize=FONT_PT)
    ax.set_xscale("linear")
    ax.margins(x=0.22)
    ax.set_yticks(range(len(names)), names)
    ax.set_ylim(len(names) - 0.5, -0.5)
    ax.grid(alpha=0.3, axis="x")


def round_time_bars(times: Mapping[str, Mapping[str, Any]], *,
                    title: str = "time per round: compute vs communication",
                    figsize: tuple[float, float] = (4.6, 4.6)) -> Figure:
    """One panel per link, each on its own linear axis; per compressor one bar of
    compute, upload and download seconds stacked, its total written beside it
    (``times[compressor][link]``: a ``RoundTime`` or a mapping with compute_s, upload_s
    and download_s)."""
    _check(times)
    links = list(next(iter(times.values())))
    names = list(times)
    fig, axes = plt.subplots(1, len(links), figsize=(figsize[0] * len(links), figsize[1]),
                             squeeze=False)
    colours = {"compute_s": "#1f77b4", "upload_s": "#ff7f0e", "download_s": "#2ca02c"}
    for k, (ax, link) in enumerate(zip(axes[0], links, strict=True)):
        parts = [(part[:-2], [_seconds(times[n][link], part) for n in names], colour)
                 for part, colour in colours.items()]
        _hbars(ax, names, parts, format_seconds, stacked=True)
        ax.set_xlabel("seconds per round")
        ax.set_title(link)
        if k:
            ax.tick_params(labelleft=False)
    axes[0][-1].legend(fontsize=FONT_PT, loc="lower right")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def _seconds(t: Any, part: str) -> float:
    return float(t[part] if isinstance(t, Mapping) else getattr(t, part))


def wire_bytes_bars(runs: Mapping[str, Any], *, relative: bool = False,
                    title: str = "bytes per worker per round: payload and wire",
                    figsize: tuple[float, float] = (7.0, 4.6)) -> Figure:
    """What travels beside what was compressed, per run (means over rounds), on a linear
    axis with the values written beside the bars. ``relative=False``: payload, wire sent
    and wire received bytes; ``relative=True``: wire sent and received as multiples of
    the payload (1 = the payload alone; the collective is named on the right)."""
    _check(runs)
    names = list(runs)
    keys = (("up_bytes_per_round", "bytes_per_worker_per_round"),
            ("wire_sent_bytes_per_round", "wire_sent_per_worker_per_round"),
            ("wire_recv_bytes_per_round", "wire_recv_per_worker_per_round"))
    payload, sent, recv = ([_value(runs[n], attr, key, n) for n in names] for attr, key in keys)
    fig, ax = plt.subplots(figsize=figsize)
    if relative:
        parts = [("wire sent / payload", [s / p for s, p in zip(sent, payload, strict=True)],
                  "#ff7f0e"),
                 ("wire received / payload", [r / p for r, p in zip(recv, payload, strict=True)],
                  "#2ca02c")]
        _hbars(ax, names, parts, lambda v: f"{v:.2f}x", stacked=False)
        ax.axvline(1.0, color="black", lw=1, ls=":")
        ax.set_xlabel("bytes on the wire per payload byte")
    else:
        parts = [("payload", payload, "#1f77b4"), ("wire sent", sent, "#ff7f0e"),
                 ("wire received", recv, "#2ca02c")]
        _hbars(ax, names, parts, format_bytes, stacked=False)
        ax.set_xlabel("bytes per worker per round")
    for i, name in enumerate(names):
        exchange = runs[name].get("exchange", "") if isinstance(runs[name], Mapping) else (
            runs[name].exchange)
        ax.annotate(f" {exchange}", (1, i), xycoords=("axes fraction", "data"),
                    va="center", fontsize=FONT_PT - 1)
    ax.legend(fontsize=FONT_PT, loc="upper right")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def powersgd_rank_sweep(runs: Mapping[int, Any], *, title: str = "PowerSGD rank sweep",
                        figsize: tuple[float, float] = (5.5, 3.8)) -> Figure:
    """Final accuracy (left axis) and payload bytes per worker per round (right axis,
    linear: they grow as r(n + m)) against the rank."""
    _check(runs)
    ranks = sorted(runs)
    points = [run_point(runs[r], f"rank {r}") for r in ranks]
    fig, ax = plt.subplots(figsize=figsize)
    acc, sent = series_style(0), series_style(3)
    ax.errorbar(ranks, [100 * p[1] for p in points], yerr=[100 * p[2] for p in points],
                capsize=3, label="final test accuracy", **acc)
    ax.set_xlabel("rank r")
    ax.set_ylabel("final test accuracy (%)", color=acc["color"])
    right = ax.twinx()
    right.plot(ranks, [p[0] for p in points], ls="--", label="payload bytes", **sent)
    right.set_ylabel("payload bytes per worker per round", color=sent["color"])
    right.set_ylim(0, 1.1 * max(p[0] for p in points))
    ax.set_xticks(ranks)
    ax.grid(alpha=0.3)
    handles = ax.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
    right.legend(handles, [h.get_label() for h in handles], fontsize=FONT_PT,
                 loc="lower right")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def accuracy_points(runs: Mapping[str, Any], *, dense_bytes: float | None = None,
                    title: str = "final accuracy", figsize: tuple[float, float] = (6.5, 3.2)
                    ) -> Figure:
    """Final accuracy per run as points (an ablation: the differences are small, so no bars
    from zero); with ``dense_bytes`` each point is labelled with its compression ratio."""
    _check(runs)
    names = list(runs)
    points = [run_point(runs[n], n) for n in names]
    fig, ax = plt.subplots(figsize=figsize)
    for i, (sent, acc, std) in enumerate(points):
        ax.errorbar([100 * acc], [i], xerr=[100 * std], capsize=3, ms=7, ls="none",
                    **series_style(i))
        text = f" {100 * acc:.1f}%" + (f", {dense_bytes / sent:.0f}x" if dense_bytes else "")
        ax.annotate(text, (100 * acc, i), textcoords="offset points", xytext=(4, 4),
                    fontsize=FONT_PT)
    ax.set_yticks(range(len(names)), names)
    ax.set_ylim(len(names) - 0.5, -0.7)
    ax.margins(x=0.4)  # room for the labels right of the points
    ax.set_xlabel("final test accuracy (%)")
    ax.grid(alpha=0.3, axis="x")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def federated_progress(runs: Mapping[str, Any], *, title: str = "FedAvg: accuracy over time",
                       figsize: tuple[float, float] = (6.0, 3.8)) -> Figure:
    """Global test accuracy against simulated wall-clock seconds (``FedHistory`` runs or
    rows of benchmarks/results/lab05.json)."""
    _check(runs)
    fig, ax = plt.subplots(figsize=figsize)
    for i, (name, h) in enumerate(runs.items()):
        get = h.get if isinstance(h, Mapping) else lambda key, h=h: getattr(h, key, None)
        per_round, acc = get("time_s_per_round"), get("test_acc")
        if not per_round or not acc:
            raise TypeError(f"run {name!r} is not a FedHistory with rounds; pass what "
                            "odt.federated.federated returns")
        clock = list(itertools.accumulate(per_round))  # s since the first round began
        every = max(1, len(clock) // 8)
        ax.plot(clock, [100 * a for a in acc], label=name, markevery=every, ms=6,
                **series_style(i))
    ax.set_xlabel("simulated time (s)")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=FONT_PT)
    ax.set_title(title)
    fig.tight_layout()
    return fig


def accuracy_against_dense(run: Any, dense: Any, *, epochs: int, name: str = "compressed",
                           title: str = "test accuracy per epoch",
                           figsize: tuple[float, float] = (5.5, 3.4)) -> Figure:
    """One run's test accuracy per epoch beside the dense fp32 run's (labelled "dense
    fp32"), on axes fixed to 1..``epochs`` and 0-100 %, so a figure redrawn for another
    setting can be compared with the last one by eye."""
    epochs = check_positive_int("epochs", epochs)
    fig, ax = plt.subplots(figsize=figsize)
    for i, (label, h) in enumerate((("dense fp32", dense), (name, run))):
        acc = _curve(h, label)
        ax.plot(range(1, len(acc) + 1), [100 * a for a in acc], label=label, ms=6,
                lw=1.3 if i else 1.0, ls="-" if i else "--", **series_style(i))
    ax.set_xlim(0.5, epochs + 0.5)
    ax.set_ylim(0, 100)
    ax.set_xticks(range(1, epochs + 1))
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=FONT_PT, loc="lower right")
    ax.set_title(title)
    fig.tight_layout()
    return fig
