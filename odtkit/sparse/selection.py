"""Fine-tuning under a parameter budget: which neurons train, chosen at random, by NEq
velocity, or once by a static rule (Quelennec et al., 2023).

    res = odt.sparse.train_selected(model, task, 0.151, "velocity", epochs=10, seed=0)
    res.test_acc, res.counts, res.share_used, res.velocities
    sel = odt.sparse.select_neurons(model, 0.151, "static")     # one selection, no training

A neuron is an output channel of a conv or Linear layer; it carries its output slice of the
weight and its bias element (``Velocity.select``'s count). Other parameters (norm layers'
affine ones) never train here; their running statistics stay frozen (the plans'
``norm_stats`` default). Every method takes the longest prefix of its order of all neurons
whose parameters fit ``budget_params(model, budget_share)``:

- "random": a random order, drawn again before every epoch (seeded by seed and epoch);
- "velocity": |NEq velocity| largest first (``Velocity.select``), re-selected after every
  epoch from the velocities measured on ``x_val``. The first epoch has no velocity yet:
  ``first="random"`` trains it on the random method's own draw (so both start alike),
  ``first="static"`` on the static selection; the reference code of Quelennec et al. offers
  both (and the full update, which would break the budget);
- "static": one selection before training, kept: the layers nearest the output first,
  inside a layer the neurons with the largest weight-slice L2 norm first, in the spirit of
  the static sparse-update schemes of "On-Device Training Under 256KB Memory".

``reselect="once"`` keeps the first selection made from data: a random draw for "random",
the selection after the first epoch for "velocity" (NEq's static use); "static" selects
once anyway. Each epoch is one ``odt.train`` call with that epoch's plan, continuing from
the weights the previous epoch left: the optimizer starts afresh every epoch (momentum and
moments reset), as a device that keeps optimizer state for the selected neurons only has
none for neurons it newly selects; all three methods are treated alike.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import torch
from torch import nn

from .._checks import check_choice, check_positive_int, check_seed
from ..plans import plan as make_plan
from ..training import check_task, evaluate, train
from ._neurons import Neurons, counts, random_order, static_order
from .budget import budget_params, check_share, selected_params, total_params
from .velocity import Velocity

__all__ = ["SELECTION_METHODS", "RESELECT", "FIRST", "SelectionResult", "select_neurons",
           "train_selected"]

SELECTION_METHODS = ("random", "velocity", "static")
RESELECT = ("epoch", "once")
FIRST = ("random", "static")  # what "velocity" trains in its first epoch
X_VAL = 64  # default validation batch: the first 64 training inputs (labels unused)

Selection = Mapping[str, tuple[int, tuple[int, ...]]]


def _derive(seed: int, epoch: int, stream: str) -> int:
    """A seed for one stream ("data", "draw") of one epoch of a run seeded with ``seed``."""
    digest = hashlib.sha256(f"{seed}/{epoch}/{stream}".encode()).digest()
    return int.from_bytes(digest[:6], "big")


def _frozen(mapping: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping))


@dataclass(frozen=True)
class SelectionResult:
    """One budgeted fine-tuning run: per-epoch test accuracy, the neurons each epoch
    trained, and for "velocity" every neuron's velocity after each epoch.

    ``selections[e]`` is epoch e's ``{param name: (0, output channels)}``; ``params[e]`` the
    parameters it trained (always <= ``budget_params``); ``velocities[e]`` maps each layer
    to its neurons' NEq velocities measured after epoch e (empty for other methods)."""

    method: str
    budget_share: float
    budget_params: int
    total_params: int
    seed: int
    reselect: str
    first: str | None  # what "velocity" trained in its first epoch; None for the others
    test_acc_before: float
    test_acc: tuple[float, ...]
    loss: tuple[float, ...]
    time_s: tuple[float, ...]
    selections: tuple[Selection, ...]
    params: tuple[int, ...]
    velocities: tuple[Mapping[str, torch.Tensor], ...] = field(default=(), repr=False)

    @property
    def epochs(self) -> int:
        return len(self.test_acc)

    @property
    def counts(self) -> tuple[Mapping[str, int], ...]:
        """Per epoch: layer -> number of neurons trained (layers with none are left out)."""
        return tuple(_frozen(counts(dict(s))) for s in self.selections)

    @property
    def shares(self) -> tuple[float, ...]:
        """Per epoch: the share of the model's parameters that trained."""
        return tuple(p / self.total_params for p in self.params)

    @property
    def share_used(self) -> float:
        """The largest share any epoch trained (never above ``budget_share``)."""
        return max(self.shares)

    @property
    def final_acc(self) -> float:
        return self.test_acc[-1]

    def as_dict(self, velocities: bool = False) -> dict[str, Any]:
        """Plain numbers for JSON: accuracies, losses, counts and shares per epoch (and the
        velocities as lists when asked)."""
        out = {"method": self.method, "budget_share": self.budget_share,
               "budget_params": self.budget_params, "total_params": self.total_params,
               "seed": self.seed, "reselect": self.reselect, "first": self.first,
               "test_acc_before": self.test_acc_before, "test_acc": list(self.test_acc),
               "loss": list(self.loss), "time_s": list(self.time_s),
               "params": list(self.params), "share_used": self.share_used,
               "counts": [dict(c) for c in self.counts]}
        if velocities:
            out["velocities"] = [{k: v.tolist() for k, v in per.items()}
                                 for per in self.velocities]
        return out

    def __repr__(self) -> str:
        return (f"SelectionResult({self.method!r}, budget {self.budget_share:.1%}, "
                f"used {self.share_used:.1%}, {self.epochs} epochs, test acc "
                f"{self.test_acc_before:.3f} -> {self.final_acc:.3f})")


def _check_model(model: object) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return model


def _check_budget(model: nn.Module, neurons: Neurons, share: float) -> int:
    """The budget in parameters; it must hold the largest neuron, so that no method's
    selection can come out empty."""
    budget = budget_params(model, share)
    largest = int(neurons.cost.max())
    if budget < largest:
        lowest = largest / total_params(model)
        raise ValueError(f"budget_share={share:g} allows {budget} of {total_params(model)} "
                         f"parameters, fewer than the largest neuron carries ({largest}); "
                         f"every method must be able to take whichever neuron comes first: "
                         f"use budget_share >= {lowest:.4g}")
    return budget


def select_neurons(model: nn.Module, budget_share: float, method: str, seed: int = 0,
                   velocity: Velocity | None = None) -> dict[str, tuple[int, tuple[int, ...]]]:
    """Neurons whose parameters fit ``budget_share`` of ``model``'s, as ``{weight or bias
    name: (0, sorted output channels)}`` (``odt.plan(model, list(sel), channels=sel)``).

    "random": an order drawn from a generator seeded with ``seed``; "static": the rule of
    the module notes; "velocity": ``velocity.select(budget_share)`` (an updated tracker)."""
    method = check_choice("method", method, SELECTION_METHODS)
    share = check_share(budget_share)
    seed = check_seed("seed", seed)
    neurons = Neurons.of(_check_model(model))
    budget = _check_budget(model, neurons, share)
    if method == "velocity":
        if not isinstance(velocity, Velocity):
            raise TypeError(f"method='velocity' needs velocity= an odt.sparse.Velocity on "
                            f"which .update() ran after an epoch, got "
                            f"{type(velocity).__name__}")
        return velocity.select(share)
    if method == "random":
        order = random_order(neurons, torch.Generator().manual_seed(seed))
    else:
        order = static_order(model, neurons)
    return neurons.selection(neurons.prefix(order, budget))


def _check_x_val(x_val: object, task: Any) -> torch.Tensor:
    if x_val is None:
        return task.x_train[:X_VAL]
    if not isinstance(x_val, torch.Tensor) or tuple(x_val.shape[1:]) != task.input_shape \
            or len(x_val) == 0:
        got = tuple(x_val.shape) if isinstance(x_val, torch.Tensor) else type(x_val).__name__
        raise ValueError(f"x_val must be a non-empty batch of inputs shaped (N, "
                         f"*{task.input_shape}) (the fixed validation batch NEq watches), got "
                         f"{got}; leave x_val=None for the first {X_VAL} training inputs")
    return x_val


def _new_selection(method: str, reselect: str, epoch: int) -> bool:
    """Whether epoch ``epoch`` selects anew."""
    if epoch == 0:
        return True
    if method == "static":
        return False
    if reselect == "epoch":
        return True
    return method == "velocity" and epoch == 1  # "once": the first selection from velocity


def train_selected(model: nn.Module, task: Any, budget_share: float, method: str, *,
                   epochs: int = 10, seed: int = 0, lr: float = 0.01,
                   optimizer: str = "sgd-m", batch_size: int = 32,
                   x_val: torch.Tensor | None = None, reselect: str = "epoch",
                   first: str = "random", mu: float = 0.5, eps: float = 1e-3,
                   ) -> SelectionResult:
    """Fine-tune ``model`` in place on ``task`` for ``epochs``, training each epoch only the
    neurons ``method`` selects within ``budget_share`` of the parameters (module notes).

    ``x_val``: the fixed batch whose outputs NEq compares between epochs ("velocity"; by
    default the first 64 training inputs). ``mu``, ``eps``: NEq's momentum and equilibrium
    threshold. Same arguments, same numbers: data order and random draws derive from
    ``seed`` and the epoch, so the three methods see the same batches for one seed."""
    method = check_choice("method", method, SELECTION_METHODS)
    reselect = check_choice("reselect", reselect, RESELECT)
    first = check_choice("first", first, FIRST)
    share = check_share(budget_share)
    epochs = check_positive_int("epochs", epochs)
    seed = check_seed("seed", seed)
    check_task(task)
    neurons = Neurons.of(_check_model(model))
    budget = _check_budget(model, neurons, share)
    tracker = (Velocity(model, _check_x_val(x_val, task), mu=mu, eps=eps)
               if method == "velocity" else None)
    if tracker is None and x_val is not None:
        _check_x_val(x_val, task)
    before = evaluate(model, task.x_test, task.y_test)
    sel: dict[str, tuple[int, tuple[int, ...]]] = {}
    rows: dict[str, list[Any]] = {k: [] for k in ("acc", "loss", "time", "sel", "params",
                                                  "vel")}
    named = dict(model.named_parameters())
    for epoch in range(epochs):
        if _new_selection(method, reselect, epoch):
            rule = first if method == "velocity" and epoch == 0 else method
            sel = select_neurons(model, share, rule, seed=_derive(seed, epoch, "draw"),
                                 velocity=tracker)
        partial = {n: e for n, e in sel.items() if len(e[1]) < named[n].shape[0]}
        plan = make_plan(model, list(sel), channels=partial or None)
        hist = train(model, task, plan, epochs=1, lr=lr, optimizer=optimizer,
                     batch_size=batch_size, seed=_derive(seed, epoch, "data"), progress=False)
        if tracker is not None:
            rows["vel"].append(_frozen(tracker.update()))
        rows["acc"].append(hist.test_acc[-1])
        rows["loss"].append(hist.loss[-1])
        rows["time"].append(hist.time_s[-1])
        rows["sel"].append(_frozen(sel))
        rows["params"].append(selected_params(model, sel))
    return SelectionResult(
        method=method, budget_share=share, budget_params=budget,
        total_params=total_params(model), seed=seed, reselect=reselect,
        first=first if method == "velocity" else None, test_acc_before=before,
        test_acc=tuple(rows["acc"]), loss=tuple(rows["loss"]), time_s=tuple(rows["time"]),
        selections=tuple(rows["sel"]), params=tuple(rows["params"]),
        velocities=tuple(rows["vel"]))
