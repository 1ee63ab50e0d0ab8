"""Lab 04: neuron selection under a budget. The setting, a sweep over budgets, methods and
seeds, and the table and figures of the lab (the NEq exercise's check is in
``odtkit.lab.checks``).

    cells = selection_sweep([0.088, 0.274], seeds=(0, 1), epochs=2)
    print(format_selection_table(cells))
    budget_accuracy_figure(cells); plt.show()

The setting is benchmarks/sparse_selection.py's (its table is the "neuron_selection"
section of benchmarks/results/sparse.json): mcunet-tiny pretrained on digits-shift's
source domain, BatchNorm folded into the convolutions, fine-tuned on the target domain with
``odt.sparse.train_selected`` (SGD with momentum, lr 0.01). ``cells`` has the shape of the
benchmark's JSON ``cells``: ``{method: {budget as "%g": {"mean", "std", "test_acc",
"share_used", "curve_mean"}}}``, so one figure draws both.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ._results import benchmark_results

__all__ = ["SELECTION_LR", "load_selection_results", "selection_model", "selection_sweep", "format_selection_table",
           "budget_accuracy_figure", "velocity_figure"]

SELECTION_LR = 0.01
_STYLE = {"random": ("tab:blue", "o"), "velocity": ("tab:orange", "s"),
          "static": ("tab:green", "^")}


RESULTS = Path("benchmarks") / "results" / "sparse.json"


def load_selection_results(path: str | Path | None = None) -> dict[str, Any]:
    """The "neuron_selection" section of benchmarks/results/sparse.json (the full run of
    benchmarks/sparse.py), found from the source tree or from the working directory and its
    parents; or of the file at ``path``."""
    whole = benchmark_results(RESULTS, "benchmarks/sparse.py", path)
    if "neuron_selection" not in whole:
        raise KeyError(f"{path or RESULTS} has no 'neuron_selection' section; run python "
                       "benchmarks/sparse_selection.py (or benchmarks/sparse.py) to add it")
    return whole["neuron_selection"]


def selection_model() -> nn.Module:
    """mcunet-tiny pretrained on digits-shift's source domain, BatchNorm folded."""
    from .. import models
    from ..quant import fold_bn_

    return fold_bn_(models.create("mcunet-tiny", pretrained=True).eval())


def selection_sweep(budgets: Sequence[float], methods: Sequence[str] | None = None,
                    seeds: Sequence[int] = (0, 1, 2), epochs: int = 10,
                    ) -> dict[str, dict[str, dict[str, Any]]]:
    """``train_selected`` on a fresh ``selection_model()`` for every budget, method and seed;
    per cell the final test accuracy's mean and population std over the seeds."""
    from .. import datasets, sparse

    task = datasets.load("digits-shift")
    methods = tuple(methods or sparse.SELECTION_METHODS)
    cells: dict[str, dict[str, dict[str, Any]]] = {}
    for method in methods:
        for share in budgets:
            runs = [sparse.train_selected(selection_model(), task, share, method,
                                          epochs=epochs, seed=s, lr=SELECTION_LR)
                    for s in seeds]
            accs = [r.final_acc for r in runs]
            cells.setdefault(method, {})[f"{share:g}"] = {
                "mean": statistics.fmean(accs), "std": statistics.pstdev(accs),
                "test_acc": accs, "share_used": [r.share_used for r in runs],
                "curve_mean": [statistics.fmean(c) for c in
                               zip(*(r.test_acc for r in runs), strict=True)]}
    return cells


def format_selection_table(cells: Mapping[str, Mapping[str, Mapping[str, Any]]],
                           digits: int = 3) -> str:
    """Budget rows, method columns: final test accuracy "mean ± std" over seeds, and the
    largest share of parameters any run trained."""
    methods = list(cells)
    budgets = list(next(iter(cells.values())))
    head = f"{'budget':>7} | " + " | ".join(f"{m:^21}" for m in methods)
    lines = [head, "-" * len(head)]
    for b in budgets:
        parts = []
        for m in methods:
            c = cells[m][b]
            parts.append(f"{c['mean']:.{digits}f} ± {c['std']:.{digits}f} "
                         f"({max(c['share_used']):5.1%})")
        lines.append(f"{float(b):>7.1%} | " + " | ".join(parts))
    lines.append("cells: final test accuracy, mean ± std over seeds (largest share used)")
    return "\n".join(lines)


def budget_accuracy_figure(cells: Mapping[str, Mapping[str, Mapping[str, Any]]], *,
                           before: float | None = None, title: str = "") -> Any:
    """Final test accuracy against the budget share, one line per method, a band of ± one
    std over seeds; ``before``: the accuracy before fine-tuning, as a dashed line."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for method, row in cells.items():
        xs = np.array([float(b) for b in row]) * 100
        mean = np.array([row[b]["mean"] for b in row])
        std = np.array([row[b]["std"] for b in row])
        colour, marker = _STYLE.get(method, ("tab:grey", "x"))
        ax.plot(xs, mean, marker=marker, color=colour, label=method)
        ax.fill_between(xs, mean - std, mean + std, color=colour, alpha=0.18, lw=0)
    if before is not None:
        ax.axhline(before, color="black", ls="--", lw=1, label="before fine-tuning")
    ax.set_xlabel("budget: share of parameters updated (%)")
    ax.set_ylabel("target test accuracy")
    ax.set_title(title or "accuracy under a budget (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=9)
    fig.tight_layout()
    return fig


def velocity_figure(result: Any, layer: str, eps: float = 1e-3) -> Any:
    """Left: |velocity| of every neuron of ``layer`` after each epoch (rows sorted by the
    last epoch's |v|; log colour scale, cells under ``eps`` blank). Right: the share of all
    neurons at equilibrium (|v| < eps) and of the layer's neurons selected, per epoch."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    if not result.velocities:
        raise ValueError(f"the run used method {result.method!r}; velocities are recorded for "
                         "method='velocity' only")
    speed = torch.stack([per[layer].abs() for per in result.velocities], dim=1)  # (N, E)
    order = speed[:, -1].argsort(descending=True)
    grid = np.ma.masked_less(speed[order].numpy(), eps)
    epochs = np.arange(1, speed.shape[1] + 1)
    fig, (left, right) = plt.subplots(1, 2, figsize=(9.6, 3.8),
                                      gridspec_kw={"width_ratios": [1.2, 1]})
    image = left.imshow(grid, aspect="auto", cmap="viridis", interpolation="nearest",
                        norm=LogNorm(vmin=eps, vmax=max(float(speed.max()), eps * 10)),
                        extent=(0.5, len(epochs) + 0.5, len(order), 0))
    fig.colorbar(image, ax=left, label="|velocity|")
    left.set_xticks(epochs)
    left.set_xlabel("after epoch")
    left.set_ylabel(f"neurons of {layer}\n(fastest at the top)")
    left.set_title(f"|v| per neuron (blank: < eps = {eps:g})", fontsize=10)
    frozen = [float(torch.cat([v.abs() < eps for v in per.values()]).float().mean())
              for per in result.velocities]
    picked = [result.counts[e].get(layer, 0) / len(order) for e in range(len(epochs))]
    right.plot(epochs, frozen, marker="o", color="tab:purple", label="all neurons: |v| < eps")
    right.plot(epochs, picked, marker="s", color="tab:orange",
               label=f"{layer}: selected")
    right.set_ylim(0, 1)
    right.set_xticks(epochs)
    right.set_xlabel("epoch")
    right.set_ylabel("share of neurons")
    right.grid(alpha=0.3)
    right.legend(fontsize=8, loc="upper left")
    right.set_title("equilibrium and selection", fontsize=10)
    fig.tight_layout()
    return fig
