"""Lab 03's first exercise check: a hand-designed sparse scheme under a byte budget, trained
against every last:K plan that fits the same budget."""

from __future__ import annotations

import copy
import difflib
from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from ..units import format_bytes
from ._checks_core import CheckResult, say
from ._sparse import LAB_LAST_KS

__all__ = ["check_sparse_scheme"]

_KEYS = ("biases", "weights", "criterion")

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
        return say(CheckResult(None, "write your scheme as {'biases': k, 'weights': {layer: "
                                      "ratio}}, then run this cell again"), quiet)
    plan, problem = _as_plan(answer, model)
    if problem:
        return say(CheckResult(False, problem), quiet)
    if not plan.trainable:
        return say(CheckResult(False, "the scheme trains nothing; give it biases or weights"),
                    quiet)
    x = example_input(model, batch_size=1)

    def peak(p: Any) -> int:
        return int(estimate(model, x, p, optimizer=optimizer, engine=engine).peak_bytes)

    mine = peak(plan)
    if mine > budget_bytes:
        return say(CheckResult(False, (
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
        return say(CheckResult(True, f"{mine_text}; {other}: {100 * (acc - best_acc):+.1f} "
                                      "points."), quiet)
    return say(CheckResult(False, (
        f"{mine_text}, no better than {best}: {other}. Spend the bytes where the "
        "contribution table says they buy the most (a high gain for few bytes first); "
        "biases of many layers cost little")), quiet)
