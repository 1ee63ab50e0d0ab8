"""Lab 03's helpers: the sparse-update benchmark's results, its Pareto table and figure (the
exercise check, a hand-designed scheme under a byte budget against last:K, is in
``odtkit.lab.checks``).

    results = load_sparse_results()            # benchmarks/results/sparse.json (3 seeds)
    print(format_pareto_table(results))
    fig = pareto_figure(results)

The exercise: a scheme ``{"biases": k or [layers], "weights": {layer: channel ratio}}`` (or
a TrainPlan) for the pretrained model, whose training step (``odt.estimate``, lean engine,
batch 1, SGD-M) fits the budget and whose accuracy after a short run beats every last:K
plan that fits the same budget, trained the same way (same epochs, lr, optimizer, seed).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from ..units import format_bytes
from ._results import benchmark_results

__all__ = ["SPARSE_RESULTS", "LAB_LAST_KS", "load_sparse_results", "pareto_rows",
           "format_pareto_table", "pareto_figure", "contribution_figure"]

SPARSE_RESULTS = Path("benchmarks") / "results" / "sparse.json"
LAB_LAST_KS: tuple[int, ...] = tuple(range(1, 26, 2))  # the benchmark's last:K grid
# series of the Pareto figure: (colour, marker)
_STYLE = {"last:K": ("#4C72B0", "o"), "searched": ("#C44E52", "*"), "full": ("black", "s"),
          "bias-only": ("#55A868", "^"), "norm-only": ("#8172B2", "v"),
          "channel-sparse": ("#DD8452", "D"), "none": ("0.5", "X")}


def load_sparse_results(path: str | Path | None = None) -> dict[str, Any]:
    """benchmarks/results/sparse.json (the full run of benchmarks/sparse.py), found from the
    source tree or from the working directory and its parents; or ``path``."""
    return benchmark_results(SPARSE_RESULTS, "benchmarks/sparse.py", path)


def _series(label: str) -> str:
    if label.startswith("last:"):
        return "last:K"
    return "searched" if label.startswith("searched") else label


def pareto_rows(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per plan of the results, by measured memory (lean engine): label, budget
    (searched plans), estimated and measured peak, accuracy mean and std over the seeds."""
    rows = []
    for label, row in results["plans"].items():
        lean = row["memory"]["lean"]
        rows.append({"plan": label, "budget_bytes": row.get("budget_bytes"),
                     "estimated_bytes": lean["estimated_bytes"],
                     "measured_bytes": lean["measured_bytes"], "mean": row["mean"],
                     "std": row["std"], "seeds": len(row["test_acc"])})
    return sorted(rows, key=lambda r: (r["measured_bytes"], r["plan"]))


def format_pareto_table(results: Mapping[str, Any]) -> str:
    """The Pareto table as text: plan, budget, estimated and measured peak (lean engine,
    batch 1), accuracy mean ± std over the seeds; a * marks plans on the Pareto front (no
    other plan is both smaller and more accurate)."""
    rows = pareto_rows(results)
    front = {r["plan"] for r in rows
             if not any(o["measured_bytes"] <= r["measured_bytes"] and o["mean"] > r["mean"]
                        for o in rows)}
    head = (f"{'plan':<17}{'budget':>10}{'estimated':>11}{'measured':>11}"
            f"{'accuracy':>16}")
    lines = [head, "-" * len(head)]
    for r in rows:
        budget = format_bytes(r["budget_bytes"]) if r["budget_bytes"] else ""
        acc = f"{100 * r['mean']:.1f} ± {100 * r['std']:.1f}%"
        mark = " *" if r["plan"] in front else ""
        lines.append(f"{r['plan']:<17}{budget:>10}{format_bytes(r['estimated_bytes']):>11}"
                     f"{format_bytes(r['measured_bytes']):>11}{acc:>16}{mark}")
    return "\n".join(lines)


def pareto_figure(results: Mapping[str, Any], *, title: str | None = None,
                  figsize: tuple[float, float] = (7.0, 4.2)) -> Figure:
    """Accuracy (mean ± std over the seeds) against measured training memory (lean engine,
    batch 1, KiB on a linear axis): last:K and the searched plans as lines through their
    points, every other scheme a marker of its own; the searched plans' budgets as dotted
    vertical lines."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in pareto_rows(results):
        groups.setdefault(_series(row["plan"]), []).append(row)
    fig, ax = plt.subplots(figsize=figsize)
    for name, rows in groups.items():
        colour, marker = _STYLE.get(name, ("0.3", "o"))
        xs = [r["measured_bytes"] / 1024 for r in rows]
        ys = [100 * r["mean"] for r in rows]
        errs = [100 * r["std"] for r in rows]
        line = "-" if len(rows) > 1 else "none"
        size = 11 if marker == "*" else 6
        ax.errorbar(xs, ys, yerr=errs, color=colour, marker=marker, markersize=size,
                    linestyle=line, linewidth=1, capsize=2, label=name, zorder=3)
    for row in groups.get("searched", []):
        ax.axvline(row["budget_bytes"] / 1024, color=_STYLE["searched"][0], linestyle=":",
                   linewidth=0.8, alpha=0.7, zorder=1)
    ax.set_xlabel("training memory, measured peak at batch 1 (KiB, lean engine)")
    ax.set_ylabel("test accuracy (%), mean ± std")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=4)
    seeds = max(len(r["test_acc"]) for r in results["plans"].values())
    ax.set_title(title if title is not None else
                 f"{results.get('model', '')} on {results.get('task', '')}: "
                 f"{results.get('epochs')} epochs, {seeds} seeds", fontsize="medium")
    fig.tight_layout()
    return fig


def contribution_figure(table: Any, *, figsize: tuple[float, float] = (7.0, 3.8)) -> Figure:
    """A ContributionTable drawn: each option's accuracy gain (points) against the bytes its
    training step needs beyond inference alone (KiB, linear): the biases of the last k layers
    as one line (k grows to the right), each layer's weights as a marker per channel ratio."""
    fig, ax = plt.subplots(figsize=figsize)
    base = table.none_peak_bytes
    ratios = sorted({c.ratio for c in table.weights})
    markers = ["o", "s", "^", "D", "v", "P"]
    colours = ["#8172B2", "#55A868", "#DD8452", "#C44E52", "#937860", "#DA8BC3"]
    for i, ratio in enumerate(ratios):
        rows = [c for c in table.weights if c.ratio == ratio]
        ax.scatter([(c.peak_bytes - base) / 1024 for c in rows], [100 * c.gain for c in rows],
                   marker=markers[i % 6], color=colours[i % 6], s=22, alpha=0.8,
                   label=f"one layer's weights at {_ratio(ratio)}", zorder=3)
    biases = sorted(table.biases, key=lambda c: c.k)
    ax.plot([(c.peak_bytes - base) / 1024 for c in biases], [100 * c.gain for c in biases],
            color="#4C72B0", marker=".", linewidth=1.2, label="biases of the last k layers",
            zorder=4)
    ax.axhline(0, color="0.5", linewidth=0.8)
    ax.set_xlabel("training memory beyond inference alone (KiB, lean engine, batch 1)")
    ax.set_ylabel("accuracy gain (points)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="upper center")
    s = table.settings_dict
    ax.set_title(f"contribution of each option alone: {s['epochs']} epochs, seed {s['seed']}, "
                 f"from {100 * table.baseline_acc:.1f}%", fontsize="medium")
    fig.tight_layout()
    return fig


def _ratio(ratio: float) -> str:
    return "all channels" if ratio == 1 else f"1/{round(1 / ratio)}"
