"""Budgets as a share of the model's parameters, and what a selection of channels costs.

    n = odt.sparse.budget_params(model, 0.151)      # parameters 15.1% of the model may train
    odt.sparse.selected_params(model, selection)    # parameters a selection trains

Quelennec et al. (2023), "Ways to Select Neurons to Update under a Budget Constraint",
compare selections at the budgets in ``BUDGET_SHARES`` (share of parameters updated).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from torch import nn

from .._checks import check_int, check_real, choice_error

# the budgets of Quelennec et al. (2023), as a share of the model's parameters
BUDGET_SHARES: tuple[float, ...] = (0.088, 0.151, 0.212, 0.274, 0.308, 0.5, 1.0)

Selection = Mapping[str, tuple[int, tuple[int, ...]]]


def check_share(share: object, name: str = "budget_share") -> float:
    """A share of parameters in (0, 1], else an error naming the value (8.8% is 0.088)."""
    try:
        return check_real(name, share, low=0.0, high=1.0, low_open=True)
    except ValueError as err:
        hint = ""
        if isinstance(share, (int, float)) and 1 < share <= 100:
            hint = f"; a percentage is written as a fraction: {share}% is {share / 100:g}"
        raise ValueError(f"{err}{hint}") from None


def total_params(model: nn.Module) -> int:
    """Number of parameter elements of ``model`` (each shared tensor counted once)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return sum(p.numel() for p in model.parameters())


def budget_params(model_or_total: nn.Module | int, share: float) -> int:
    """The number of parameters a budget of ``share`` (in (0, 1]) allows: the share of the
    model's parameter count (or of ``model_or_total`` if an int), rounded down."""
    share = check_share(share)
    total = (total_params(model_or_total) if isinstance(model_or_total, nn.Module)
             else check_int("total parameters", model_or_total, low=1))
    # a share written in decimal (0.29 of 100) must not lose a parameter to binary rounding
    return math.floor(share * total * (1 + 1e-12))


def selected_params(model: nn.Module, selection: Selection) -> int:
    """Parameter elements a selection ``{param_name: (dim, indices)}`` trains: for each entry,
    the parameter's size divided by its length along ``dim``, times the number of indices."""
    named = dict(model.named_parameters())
    count = 0
    for name, entry in selection.items():
        if name not in named:
            raise choice_error("parameter", name, named)
        dim, indices = entry
        p = named[name]
        dim = check_int(f"dim of {name!r} (shape {tuple(p.shape)})", dim, low=0,
                        high=p.dim() - 1)
        count += p.numel() // p.shape[dim] * len(indices)
    return count
