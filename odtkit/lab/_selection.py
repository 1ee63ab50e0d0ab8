"""Lab 04: neuron selection under a budget. The setting, a sweep over budgets, methods and
seeds, the table and figures of the lab, and the NEq exercise's check.

    cells = selection_sweep([0.088, 0.274], seeds=(0, 1), epochs=2)
    print(format_selection_table(cells))
    budget_accuracy_figure(cells); plt.show()
    check_neq(delta, velocity)       # the exercise: NEq by hand on NEQ_OUTPUTS

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

from ._checks_core import CheckResult
from ._quantize import _as_array
from ._results import benchmark_results

__all__ = ["SELECTION_LR", "load_selection_results", "selection_model", "selection_sweep", "format_selection_table",
           "budget_accuracy_figure", "velocity_figure", "NEQ_OUTPUTS", "NEQ_MU", "check_neq"]

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


# ----------------------------------------------------------------------- the exercise
# outputs of 3 neurons on 2 validation values: before training, after epoch 1, after epoch 2
NEQ_OUTPUTS = (torch.tensor([[1.0, 0.0], [3.0, 4.0], [1.0, 1.0]]),
               torch.tensor([[3.0, 4.0], [6.0, 8.0], [0.0, 0.0]]),
               torch.tensor([[0.0, 1.0], [4.0, 3.0], [0.0, 0.0]]))
NEQ_MU = 0.5


def _neq(outputs: Sequence[torch.Tensor], mu: float, *, delta_fn: Any = None,
         rule: Any = None) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """delta and velocity after each epoch (float64), with an optional slip in either."""
    from ..sparse import neuron_delta

    delta_fn = delta_fn or (lambda a, b: neuron_delta(a, b).double())
    rule = rule or (lambda v, d_prev, d: mu * v - (d_prev - d))
    delta = torch.zeros(len(outputs[0]), dtype=torch.float64)
    v = torch.zeros_like(delta)
    deltas, speeds = [], []
    for a, b in zip(outputs, outputs[1:], strict=False):
        d = delta_fn(a, b)
        v, delta = rule(v, delta, d), d
        deltas.append(delta)
        speeds.append(v)
    return deltas, speeds


def _plain_cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine as torch.nn.functional.cosine_similarity gives it: 0 where a row is zero."""
    return torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=1)


def _slips(mu: float) -> tuple[list[tuple[torch.Tensor, str]], list[tuple[torch.Tensor, str]]]:
    """(values, message) of the common slips: for delta after the last epoch, and for the
    velocity given a right delta."""
    out = NEQ_OUTPUTS
    (d1, d2), (v1, v2) = _neq(out, mu)
    deltas = [
        (1 - d2, "you returned the cosine similarity itself; delta = 1 - cos"),
        (d1, "that is delta after epoch 1; compare the outputs after epoch 2 with those "
             "after epoch 1"),
        (_neq(out[::2], mu)[0][0], "you compared epoch 2 with the outputs before "
                                   "training; NEq compares consecutive epochs"),
        (_neq(out, mu, delta_fn=lambda a, b: 1 - _plain_cos(a, b))[0][1],
         "the third neuron's outputs are zero in both epochs: it did not change, so delta "
         "is 0 (NEq takes cos = 1 when both are zero; F.cosine_similarity returns 0 there)"),
    ]
    speeds = [
        (-v2, "the sign is flipped: v = mu * v_prev - (delta_prev - delta), the recursion "
              "of the NEq reference code and odt.sparse.Velocity (the paper prints the "
              "negative: (delta_prev - delta) - mu * v_prev)"),
        (v2.abs(), "you returned |v|; the velocity keeps its sign (a neuron is at "
                   "equilibrium when |v| < eps, but the recursion needs the signed value)"),
        (d2 - d1, "no momentum: add mu * v_prev, with v_prev = velocity after epoch 1 "
                  "(= delta after epoch 1, since v and delta start at 0)"),
        (mu * v1 + (d1 - d2), "the change of delta has the wrong sign: v = mu * v_prev - "
                              "(delta_prev - delta)"),
        (mu * (v1 - (d1 - d2)), "mu multiplies only the previous velocity: v = mu * v_prev "
                                "- (delta_prev - delta)"),
        (v1, "that is the velocity after epoch 1; go one epoch further"),
    ]
    return deltas, speeds


def _numbers(value: Any, what: str, size: int, neuron: int | None) -> tuple[Any, str]:
    """``value`` as float64 numbers (a vector of ``size``, or one number for ``neuron``)."""
    arr, message = _as_array(value, what)
    if arr is None:
        return None, message
    want = () if neuron is not None else (size,)
    if arr.shape != want and not (neuron is not None and arr.size == 1):
        return None, (f"{what} must be one number for neuron {neuron}" if neuron is not None
                      else f"{what} must hold one number per neuron ({size}), got shape "
                           f"{arr.shape}")
    return arr.reshape(want), ""


def _match(got: np.ndarray, want: torch.Tensor, neuron: int | None) -> bool:
    ref = want.numpy() if neuron is None else want.numpy()[neuron]
    return bool(np.allclose(got, ref, rtol=1e-4, atol=1e-4))


def check_neq(delta: Any, velocity: Any, neuron: int | None = None, *,
              mu: float = NEQ_MU, quiet: bool = False) -> CheckResult:
    """Lab 04: NEq by hand on ``NEQ_OUTPUTS``, the outputs of 3 neurons before training and
    after epochs 1 and 2. ``delta`` and ``velocity`` after epoch 2, one number per neuron
    (list, numpy, torch) or, with ``neuron=i``, neuron i's numbers (float or int).
    A slip gets a message naming it; never raises."""
    result = _check_neq(delta, velocity, neuron, mu)
    if not quiet:
        print(result)
    return result


def _check_neq(delta: Any, velocity: Any, neuron: int | None, mu: float) -> CheckResult:
    if delta is None or delta is ... or velocity is None or velocity is ...:
        return CheckResult(None, "fill in delta and velocity after epoch 2, then run this "
                                 "cell again")
    size = len(NEQ_OUTPUTS[0])
    if neuron is not None and (isinstance(neuron, bool) or not isinstance(neuron, int)
                               or not 0 <= neuron < size):
        return CheckResult(False, f"neuron must be an index in 0..{size - 1}, got {neuron!r}")
    (_, d2), (_, v2) = _neq(NEQ_OUTPUTS, mu)
    which = "" if neuron is None else f" of neuron {neuron}"
    got_d, message = _numbers(delta, "delta", size, neuron)
    if got_d is None:
        return CheckResult(False, message)
    deltas, speeds = _slips(mu)
    if not _match(got_d, d2, neuron):
        hint = next((m for vals, m in deltas if _match(got_d, vals, neuron)),
                    "delta = 1 - cos(y_after_epoch_1, y_after_epoch_2), per neuron (row)")
        return CheckResult(False, f"delta{which} is not right: {hint}")
    got_v, message = _numbers(velocity, "velocity", size, neuron)
    if got_v is None:
        return CheckResult(False, f"delta is right; {message}")
    if not _match(got_v, v2, neuron):
        hint = next((m for vals, m in speeds if _match(got_v, vals, neuron)),
                    "v_1 = mu * 0 - (0 - delta_1), then v_2 = mu * v_1 - (delta_1 - delta_2)")
        return CheckResult(False, f"delta is right, velocity{which} is not: {hint}")
    frozen = [i for i in range(size) if abs(float(v2[i])) < 1e-3]
    if neuron is None:
        verdict = f"at equilibrium (|v| < 1e-3): neurons {frozen}"
    else:
        verdict = f"neuron {neuron} is {'' if neuron in frozen else 'not '}at equilibrium"
    return CheckResult(True, f"delta{which} = {_fmt(d2, neuron)}, velocity{which} = "
                             f"{_fmt(v2, neuron)}; {verdict}")


def _fmt(values: torch.Tensor, neuron: int | None) -> str:
    if neuron is not None:
        return f"{float(values[neuron]):.3g}"
    return "[" + ", ".join(f"{float(x):.3g}" for x in values) + "]"
