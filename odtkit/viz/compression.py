"""Figures of compressed training: bytes against accuracy, curves, round time over links,
PowerSGD rank sweeps and federated accuracy against wall-clock time.

A run is a ``DistHistory`` (from ``odt.distributed.simulate``), a list of them (seeds:
the mean is plotted, the spread as an error bar) or a row of benchmarks/compress.json.
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

__all__ = ["bytes_vs_accuracy", "compression_curves", "round_time_bars",
           "powersgd_rank_sweep", "accuracy_points", "federated_progress", "run_point",
           "wire_bytes_bars"]


def run_point(run: Any, name: str = "run") -> tuple[float, float, float]:
    """(bytes per worker per round, mean final accuracy, its std over seeds) of a run."""
    if isinstance(run, Mapping):
        try:
            return (float(run["bytes_per_worker_per_round"]), float(run["final_acc_mean"]),
                    float(run.get("final_acc_std", 0.0)))
        except KeyError as err:
            raise ValueError(f"run {name!r} is a mapping without {err}; pass a DistHistory "
                             "or a row of benchmarks/compress.json") from None
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


def _check(runs: Mapping[str, Any]) -> None:
    if not runs:
        raise ValueError("nothing to plot: pass {'label': run, ...}")


def bytes_vs_accuracy(runs: Mapping[str, Any], *, dense_bytes: float | None = None,
                      title: str = "bytes per round against accuracy",
                      figsize: tuple[float, float] = (7.5, 4.0)) -> Figure:
    """Bytes one worker sends per round (log) against final test accuracy, one marker per
    run (legend on the right: many runs share an accuracy)."""
    _check(runs)
    fig, ax = plt.subplots(figsize=figsize)
    markers = "osD^v<>ph*X"
    for i, (name, run) in enumerate(runs.items()):
        sent, acc, std = run_point(run, name)
        ax.errorbar(sent, 100 * acc, yerr=100 * std, fmt=markers[i % len(markers)],
                    capsize=3, label=name, color=f"C{i % 10}")
    if dense_bytes:
        ax.axvline(dense_bytes, color="grey", ls=":", lw=1)
    ax.set_xscale("log")
    ax.set_xlabel("bytes per worker per round (log scale)")
    ax.set_ylabel("final test accuracy (%)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize="x-small", loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.set_title(title)
    fig.tight_layout()
    return fig


def compression_curves(runs: Mapping[str, Any], *, title: str = "test accuracy per epoch",
                       figsize: tuple[float, float] = (6.0, 3.8)) -> Figure:
    """Test accuracy per epoch, one line per compressor (first seed of a list)."""
    _check(runs)
    fig, ax = plt.subplots(figsize=figsize)
    for name, run in runs.items():
        if isinstance(run, Mapping):
            if "curve_seed0" not in run:
                raise ValueError(f"run {name!r} is a mapping without 'curve_seed0'; pass a "
                                 "DistHistory or a row of benchmarks/compress.json")
            acc = run["curve_seed0"]
        else:
            acc = (run[0] if isinstance(run, Sequence) else run).test_acc
        ax.plot(range(1, len(acc) + 1), [100 * a for a in acc], label=name, lw=1.3)
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="x-small", ncol=2)
    ax.set_title(title)
    fig.tight_layout()
    return fig


def round_time_bars(times: Mapping[str, Mapping[str, Any]], *,
                    title: str = "time per round: compute vs communication",
                    figsize: tuple[float, float] = (8.0, 4.2)) -> Figure:
    """One panel per link; per compressor three bars on a log axis: compute, upload and
    download seconds of one round (``times[compressor][link]``: a ``RoundTime`` or a
    mapping with compute_s, upload_s and download_s)."""
    _check(times)
    links = list(next(iter(times.values())))
    names = list(times)
    fig, axes = plt.subplots(1, len(links), figsize=figsize, squeeze=False, sharey=True)
    parts = (("compute_s", "tab:blue"), ("upload_s", "tab:orange"), ("download_s", "tab:green"))
    height = 0.8 / len(parts)
    for ax, link in zip(axes[0], links, strict=True):
        for j, (part, color) in enumerate(parts):
            ys = [i + (j - 1) * height for i in range(len(names))]
            ax.barh(ys, [_seconds(times[n][link], part) for n in names], height=height,
                    color=color, label=part[:-2])
        ax.set_xscale("log")
        ax.set_xlabel("seconds per round (log)")
        ax.set_title(link)
        ax.grid(alpha=0.3, axis="x")
    axes[0][0].set_yticks(range(len(names)), names)
    axes[0][0].invert_yaxis()
    axes[0][-1].legend(fontsize="x-small", loc="lower right")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def wire_bytes_bars(runs: Mapping[str, Any], *,
                    title: str = "bytes per worker per round: payload and wire",
                    figsize: tuple[float, float] = (7.0, 4.2)) -> Figure:
    """Per run (a ``DistHistory``) three bars on a log axis, means over rounds: the payload
    one worker compresses to, and the bytes it sends and receives on the wire for the
    collective used (named beside the bars)."""
    _check(runs)
    parts = (("up_bytes_per_round", "payload", "tab:blue"),
             ("wire_sent_bytes_per_round", "wire sent", "tab:orange"),
             ("wire_recv_bytes_per_round", "wire received", "tab:green"))
    names = list(runs)
    for name in names:
        if not getattr(runs[name], "wire_sent_bytes_per_round", None):
            raise TypeError(f"run {name!r} has no wire bytes; pass what "
                            "odt.distributed.simulate returns")
    fig, ax = plt.subplots(figsize=figsize)
    height = 0.8 / len(parts)
    for j, (attr, label, color) in enumerate(parts):
        ys = [i + (j - 1) * height for i in range(len(names))]
        ax.barh(ys, [max(statistics.fmean(getattr(runs[n], attr)), 1e-9) for n in names],
                height=height, color=color, label=label)
    for i, name in enumerate(names):
        ax.annotate(f" {runs[name].exchange}", (1, i), xycoords=("axes fraction", "data"),
                    va="center", fontsize="x-small")
    ax.set_xscale("log")
    ax.set_xlabel("bytes per worker per round (log)")
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    ax.grid(alpha=0.3, axis="x")
    ax.legend(fontsize="x-small", loc="lower left")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def _seconds(t: Any, part: str) -> float:
    value = t[part] if isinstance(t, Mapping) else getattr(t, part)
    return max(float(value), 1e-9)  # log axes cannot show 0


def powersgd_rank_sweep(runs: Mapping[int, Any], *, title: str = "PowerSGD rank sweep",
                        figsize: tuple[float, float] = (5.5, 3.6)) -> Figure:
    """Final accuracy (left) and bytes per worker per round (right) against the rank."""
    _check(runs)
    ranks = sorted(runs)
    points = [run_point(runs[r], f"rank {r}") for r in ranks]
    fig, ax = plt.subplots(figsize=figsize)
    ax.errorbar(ranks, [100 * p[1] for p in points], yerr=[100 * p[2] for p in points],
                marker="o", capsize=3, color="tab:blue")
    ax.set_xlabel("rank r")
    ax.set_ylabel("final test accuracy (%)", color="tab:blue")
    right = ax.twinx()
    right.plot(ranks, [p[0] for p in points], marker="s", color="tab:red")
    right.set_ylabel("bytes per worker per round", color="tab:red")
    ax.set_xticks(ranks)
    ax.grid(alpha=0.3)
    ax.set_title(title)
    fig.tight_layout()
    return fig


def accuracy_points(runs: Mapping[str, Any], *, dense_bytes: float | None = None,
                    title: str = "final accuracy", figsize: tuple[float, float] = (6.0, 3.2)
                    ) -> Figure:
    """Final accuracy per run as points (an ablation: the differences are small, so no bars
    from zero); with ``dense_bytes`` each point is labelled with its compression ratio."""
    _check(runs)
    names = list(runs)
    points = [run_point(runs[n], n) for n in names]
    fig, ax = plt.subplots(figsize=figsize)
    ax.errorbar([100 * p[1] for p in points], range(len(names)),
                xerr=[100 * p[2] for p in points], fmt="o", capsize=3)
    for i, (sent, acc, _) in enumerate(points):
        text = f" {100 * acc:.1f}%" + (f", {dense_bytes / sent:.0f}x" if dense_bytes else "")
        ax.annotate(text, (100 * acc, i), textcoords="offset points", xytext=(4, 4),
                    fontsize="small")
    ax.set_yticks(range(len(names)), names)
    ax.set_ylim(len(names) - 0.5, -0.7)
    ax.margins(x=0.25)  # room for the labels right of the points
    ax.set_xlabel("final test accuracy (%)")
    ax.grid(alpha=0.3, axis="x")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def federated_progress(runs: Mapping[str, Any], *, title: str = "FedAvg: accuracy over time",
                       figsize: tuple[float, float] = (6.0, 3.6)) -> Figure:
    """Global test accuracy against simulated wall-clock seconds (``FedHistory`` runs)."""
    _check(runs)
    fig, ax = plt.subplots(figsize=figsize)
    for name, h in runs.items():
        if not getattr(h, "time_s_per_round", None):
            raise TypeError(f"run {name!r} is not a FedHistory with rounds; pass what "
                            "odt.federated.federated returns")
        clock = list(itertools.accumulate(h.time_s_per_round))  # s since the first round began
        ax.plot(clock, [100 * a for a in h.test_acc], marker=".", label=name)
    ax.set_xlabel("simulated time (s)")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    ax.set_title(title)
    fig.tight_layout()
    return fig
