"""Optimizers by name, so plans, the memory model and the training loop agree.

``"sgd"`` keeps no state, ``"sgd-m"`` one momentum buffer per trainable tensor,
``"adam"`` two moment buffers plus a scalar step count per trainable tensor.

Channel-sparse parameters (``TrainPlan.channels``, passed as ``masks``) keep their frozen
entries bit-identical: a step pre-hook zeroes their gradient outside the mask and adds
the weight decay there by hand, ``weight_decay * param`` on the trained entries only, in
a parameter group of their own whose ``weight_decay`` is 0. The decay thus enters the
gradient exactly where, and in the same arithmetic (``grad + wd * param``) as, torch's
own SGD and Adam add it. A frozen entry then sees a zero gradient at every step, so its
momentum buffer and Adam moments stay 0 and its update is exactly zero (Adam: 0 / (0 +
eps)). The optimizer state stays full size (zeros at frozen entries); after a step the
``.grad`` of such a parameter holds the masked gradient plus the decay term. A mask may
be one bool vector per selected dim, viewed to broadcast (``(1, in, 1, 1)``), which costs
in + out bytes instead of a full bool tensor.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch

from .._checks import choice_error
from .._plan_channels import zero_frozen_

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
    masks: Mapping[torch.nn.Parameter, torch.Tensor | tuple[torch.Tensor, ...]] | None = None,
) -> torch.optim.Optimizer:
    """Build the optimizer called ``name`` over ``params`` (only those that train).

    ``masks``: {parameter: bool tensor, True where it trains} for the channel-sparse
    parameters, each broadcastable to the parameter's shape, or a tuple of such (an entry
    trains where all are True); their frozen entries never change (module notes).
    """
    check_optimizer(name)
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ValueError(
            "nothing to optimize: no parameter has requires_grad=True. "
            "Apply a plan that trains something, e.g. odt.plan(model, 'last:1').apply_(model)."
        )
    if lr <= 0:
        raise ValueError(f"learning rate must be positive, got lr={lr}")
    keep = {id(p): m for p, m in (masks or {}).items()}
    sparse = [p for p in params if id(p) in keep]
    groups: list[Any] = params
    if sparse:
        plain = [p for p in params if id(p) not in keep]
        groups = ([{"params": plain}] if plain else []) + [
            {"params": sparse, "weight_decay": 0.0}]
    if name == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(groups, lr=lr, weight_decay=weight_decay)
    elif name == "sgd-m":
        opt = torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    else:
        opt = torch.optim.Adam(groups, lr=lr, weight_decay=weight_decay)
    if sparse:
        frozen = [(p, _frozen(p, keep[id(p)])) for p in sparse]
        opt.register_step_pre_hook(_masked_step(frozen, weight_decay))
    return opt


def _frozen(param: torch.Tensor, keep: torch.Tensor | tuple[torch.Tensor, ...]
            ) -> tuple[torch.Tensor, ...]:
    """The masks inverted (True where frozen), checked to broadcast to ``param``."""
    keeps = keep if isinstance(keep, tuple) else (keep,)
    out = []
    for k in keeps:
        if not isinstance(k, torch.Tensor) or k.dtype != torch.bool:
            raise TypeError(f"a mask must be a bool tensor, got {k!r:.80}")
        try:
            fits = torch.broadcast_shapes(k.shape, param.shape) == param.shape
        except RuntimeError:
            fits = False
        if not fits:
            raise ValueError(f"a mask of shape {tuple(k.shape)} does not broadcast to the "
                             f"parameter's shape {tuple(param.shape)}")
        out.append(~k.to(param.device))
    return tuple(out)


def _masked_step(frozen: list[tuple[torch.Tensor, tuple[torch.Tensor, ...]]],
                 weight_decay: float) -> Callable[..., None]:
    """Step pre-hook: zero the gradients at frozen entries; decay the trained ones."""

    def hook(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        with torch.no_grad():
            for param, offs in frozen:
                if param.grad is None:
                    continue
                zero_frozen_(param.grad, offs)
                if weight_decay:
                    param.grad.add_(zero_frozen_(param.detach().clone(), offs),
                                    alpha=weight_decay)

    return hook
