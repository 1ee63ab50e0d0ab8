"""Lab 03's helpers: the sparse-update benchmark's results, its Pareto table and figure, and
the exercise check (a hand-designed scheme under a byte budget against last:K).

    results = load_sparse_results()            # benchmarks/results/sparse.json (3 seeds)
    print(format_pareto_table(results))
    fig = pareto_figure(results)
    check_sparse_scheme({"biases": 25, "weights": {"classifier": 1.0}}, 393_216, model, task)

The exercise: a scheme ``{"biases": k or [layers], "weights": {layer: channel ratio}}`` (or
a TrainPlan) for the pretrained model, whose training step (``odt.estimate``, lean engine,
batch 1, SGD-M) fits the budget and whose accuracy after a short run beats every last:K
plan that fits the same budget, trained the same way (same epochs, lr, optimizer, seed).
"""

from __future__ import annotations

import copy
import difflib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
from matplotlib.figure import Figure
from torch import nn

from ..units import format_bytes
from ._checks_core import CheckResult
from ._results import benchmark_results

__all__ = ["SPARSE_RESULTS", "LAB_LAST_KS", "load_sparse_results", "pareto_rows",
           "format_pareto_table", "pareto_figure", "contribution_figure",
           "check_sparse_scheme"]

SPARSE_RESULTS = Path("benchmarks") / "results" / "sparse.json"
LAB_LAST_KS: tuple[int, ...] = tuple(range(1, 26, 2))  # the benchmark's last:K grid
_KEYS = ("biases", "weights", "criterion")
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


# ------------------------------------------------------------------------- the exercise

def _say(result: CheckResult, quiet: bool) -> CheckResult:
    if not quiet:
        print(result)
    return result


def _weight_layers(model: nn.Module) -> list[str]:
    """Conv and linear layers: modules with a weight of two or more dims."""
    return [n for n, m in model.named_modules()
            if n and isinstance(getattr(m, "weight", None), nn.Parameter) and m.weight.dim() >= 2]


def _scheme_problem(answer: Mapping[str, Any], model: nn.Module) -> str | None:
    """What is wrong with a scheme dict, in words; None when nothing is."""
    extra = [k for k in answer if k not in _KEYS]
    if extra:
        return (f"unknown key(s) {extra}; a scheme is {{'biases': k or [layers], 'weights': "
                f"{{layer: ratio}}}} (optionally 'criterion')")
    weights = answer.get("weights") or {}
    if not isinstance(weights, Mapping):
        return f"'weights' must be a dict {{layer: channel ratio}}, got {type(weights).__name__}"
    layers = _weight_layers(model)
    for layer, ratio in weights.items():
        if layer not in layers:
            near = difflib.get_close_matches(str(layer), layers, n=3, cutoff=0.6)
            hint = f" Did you mean {', '.join(map(repr, near))}?" if near else ""
            return (f"unknown layer {layer!r} in 'weights'.{hint} The conv and linear layers "
                    f"are {layers[0]!r} ... {layers[-1]!r} ({len(layers)} of them; the "
                    "contribution table's table.layers lists them)")
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio <= 1:
            return (f"the ratio of {layer!r} is {ratio!r}; a channel ratio is a fraction in "
                    "(0, 1], e.g. 0.25 for a quarter of the channels")
    return None


def _as_plan(answer: Any, model: nn.Module) -> tuple[Any, str | None]:
    """(the answer as a TrainPlan, None) or (None, what is wrong with it)."""
    from .. import sparse
    from ..plans import TrainPlan

    if isinstance(answer, TrainPlan):
        names = tuple(n for n, _ in model.named_parameters())
        if tuple(answer.names) != names:
            return None, ("this plan was made for another model (its parameter names differ); "
                          "make it with odt.sparse.plan(model, ...) on the lab's model")
        return answer, None
    if not isinstance(answer, Mapping):
        return None, (f"give a scheme dict {{'biases': k, 'weights': {{layer: ratio}}}} or a "
                      f"TrainPlan, got {type(answer).__name__}")
    problem = _scheme_problem(answer, model)
    if problem:
        return None, problem
    try:
        return sparse.plan(model, **dict(answer)), None
    except (ValueError, TypeError) as err:
        return None, f"odt.sparse.plan refused the scheme: {err}"


def _largest_parts(plan: Any, count: int = 3) -> str:
    sizes = dict(zip(plan.names, plan.shapes, strict=True))
    kept = {n: len(idx) / sizes[n][dim] for n, dim, idx in plan.channels}
    numel = {n: int(round(_numel(sizes[n]) * kept.get(n, 1.0)))
             for n in plan.names if n in plan.trainable}  # model order: ties stay stable
    top = sorted(numel, key=lambda n: -numel[n])[:count]
    return ", ".join(f"{n} ({numel[n]:,} entries)" for n in top)


def _numel(shape: Sequence[int]) -> int:
    out = 1
    for s in shape:
        out *= int(s)
    return out


def check_sparse_scheme(answer: Any, budget_bytes: int, model: nn.Module, task: Any, *,
                        epochs: int = 2, lr: float = 0.05, optimizer: str = "sgd-m",
                        seed: int = 0, last_ks: Sequence[int] = LAB_LAST_KS,
                        engine: str = "lean", quiet: bool = False) -> CheckResult:
    """Lab 03: is ``answer`` (a scheme dict or a TrainPlan for ``model``) valid, within
    ``budget_bytes`` of training peak (``odt.estimate``: ``engine``, batch 1,
    ``optimizer``), and more accurate after ``epochs`` on ``task`` than every last:K of
    ``last_ks`` that fits the budget, trained the same way? ``model`` is not changed."""
    from .. import estimate, train
    from .. import plan as make_plan
    from ..models import example_input

    if answer is None or answer is ...:
        return _say(CheckResult(None, "write your scheme as {'biases': k, 'weights': {layer: "
                                      "ratio}}, then run this cell again"), quiet)
    plan, problem = _as_plan(answer, model)
    if problem:
        return _say(CheckResult(False, problem), quiet)
    if not plan.trainable:
        return _say(CheckResult(False, "the scheme trains nothing; give it biases or weights"),
                    quiet)
    x = example_input(model, batch_size=1)

    def peak(p: Any) -> int:
        return int(estimate(model, x, p, optimizer=optimizer, engine=engine).peak_bytes)

    mine = peak(plan)
    if mine > budget_bytes:
        return _say(CheckResult(False, (
            f"the training peak is {format_bytes(mine)} ({mine:,} B), over the budget "
            f"{format_bytes(budget_bytes)} ({budget_bytes:,} B) by {mine - budget_bytes:,} B. "
            f"With {optimizer} each trained entry keeps a gradient and optimizer state; the "
            f"largest trained parts are {_largest_parts(plan)}: drop some of them or lower "
            "their ratio, then check again (biases are cheap)")), quiet)

    def accuracy(p: Any) -> float:
        twin = copy.deepcopy(model)
        history = train(twin, task, p, epochs=epochs, lr=lr, optimizer=optimizer, seed=seed,
                        engine=engine, progress=False)
        return float(history.test_acc[-1])

    fitting = {f"last:{k}": make_plan(model, f"last:{k}") for k in last_ks}
    fitting = {k: p for k, p in fitting.items() if peak(p) <= budget_bytes}
    acc = accuracy(plan)
    if not fitting:
        best, best_acc, best_peak = "none", float(accuracy(make_plan(model, "none"))), 0
    else:
        accs = {k: accuracy(p) for k, p in fitting.items()}
        best = max(accs, key=lambda k: accs[k])
        best_acc, best_peak = accs[best], peak(fitting[best])
    mine_text = (f"your scheme needs {format_bytes(mine)} of {format_bytes(budget_bytes)} and "
                 f"reaches {100 * acc:.1f}% after {epochs} epoch{'s' * (epochs != 1)}")
    other = (f"the best last:K that fits, {best} ({format_bytes(best_peak)}), reaches "
             f"{100 * best_acc:.1f}%" if best != "none" else
             f"no last:K fits; without training the model reaches {100 * best_acc:.1f}%")
    if acc > best_acc:
        return _say(CheckResult(True, f"{mine_text}; {other}: {100 * (acc - best_acc):+.1f} "
                                      "points."), quiet)
    return _say(CheckResult(False, (
        f"{mine_text}, no better than {best}: {other}. Spend the bytes where the "
        "contribution table says they buy the most (a high gain for few bytes first); "
        "biases of many layers cost little")), quiet)
