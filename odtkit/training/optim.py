"""Optimizers by name, so plans, the memory model and the training loop agree.

``"sgd"`` keeps no state, ``"sgd-m"`` one momentum buffer per trainable tensor,
``"adam"`` two moment buffers plus a scalar step count per trainable tensor.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from .._checks import choice_error

OPTIMIZERS = ("sgd", "sgd-m", "adam")
# full-size state tensors each optimizer keeps per trainable tensor (Adam also keeps a
# float32 scalar step count per tensor)
_STATE_COPIES = {"sgd": 0, "sgd-m": 1, "adam": 2}


def check_optimizer(name: str) -> str:
    """Return ``name`` if it is a known optimizer, else raise naming the choices."""
    if name not in OPTIMIZERS:
        raise choice_error("optimizer", name, OPTIMIZERS)
    return name


def state_copies(name: str) -> int:
    """How many extra tensors of each trainable parameter's size optimizer ``name`` keeps."""
    return _STATE_COPIES[check_optimizer(name)]


def make_optimizer(
    name: str,
    params: Iterable[torch.nn.Parameter],
    lr: float,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
) -> torch.optim.Optimizer:
    """Build the optimizer called ``name`` over ``params`` (only those that train)."""
    check_optimizer(name)
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ValueError(
            "nothing to optimize: no parameter has requires_grad=True. "
            "Apply a plan that trains something, e.g. odt.plan(model, 'last:1').apply_(model)."
        )
    if lr <= 0:
        raise ValueError(f"learning rate must be positive, got lr={lr}")
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd-m":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
