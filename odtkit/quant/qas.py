"""Training the int8 graph in integer units, and quantization-aware scaling (QAS).

The int8 graph trains the integers it stores: W_int = W / s_W (per output channel) and
b_int = b / (s_W s_x). By the chain rule its gradients are G_int = s_W G_W and
G_b,int = s_W s_x G_b, so the gradient-to-weight norm ratio is off by s_W^2 (bias: by
(s_W s_x)^2) from the float graph's:

    ||G_int|| / ||W_int|| = s_W^2 ||G_W|| / ||W||.

QAS (Lin et al., NeurIPS 2022) multiplies each weight gradient by s_W^-2 and each bias
gradient by (s_W s_x)^-2, which restores the float ratio channel by channel, so any
optimizer tuned for float (SGD, SGD-M, Adam) takes float-sized steps.

    int8 = to_int8(model, task.x_train[:256])
    handle = qas_(int8)                                  # gradient hooks on the integers
    opt = make_optimizer("sgd-m", int8.parameters(), lr=0.05)
    round_after_step_(opt, int8, rounding="stochastic")  # store integers after each step
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.hooks import RemovableHandle

from .._checks import check_choice, check_seed
from ..models import eval_mode
from ._int8_ops import FloatHead, QLayer
from .int8 import Int8Model
from .quantizers import ROUNDINGS

__all__ = ["qas_", "QAS", "norm_ratios", "round_after_step_", "qas_scales"]


class _Scale:
    """A gradient hook that multiplies by a fixed tensor (marked so qas_ can find it)."""

    def __init__(self, factor: torch.Tensor) -> None:
        self.factor = factor

    def __call__(self, grad: torch.Tensor) -> torch.Tensor:
        return grad * self.factor


class QAS:
    """What ``qas_`` registered: the multipliers by parameter name, and ``remove()``."""

    def __init__(self, factors: dict[str, torch.Tensor], handles: list[RemovableHandle]) -> None:
        self.factors = factors  # parameter name -> multiplier broadcast to its shape
        self._handles = handles

    def remove(self) -> None:
        """Unregister the hooks: gradients are integer-unit gradients again."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __repr__(self) -> str:
        return f"QAS({len(self.factors)} tensors, {'active' if self._handles else 'removed'})"


def qas_scales(model: Int8Model) -> dict[str, torch.Tensor]:
    """The QAS multipliers by parameter name: s_W^-2 per output channel for weights and
    (s_W s_x)^-2 for biases, shaped to broadcast against the parameter."""
    factors = {}
    for path, layer in model.layers().items():
        s_w = layer.w_scale.double()
        w = s_w.pow(-2).reshape(-1, *([1] * (layer.weight.dim() - 1)))
        factors[f"{path}.weight"] = w.to(layer.weight.dtype)
        factors[f"{path}.bias"] = (s_w * float(layer.in_scale)).pow(-2).to(layer.bias.dtype)
    return factors


def qas_(model: Int8Model) -> QAS:
    """Apply quantization-aware scaling to ``model`` in place: a gradient hook on every
    integer weight and bias multiplies its gradient by s_W^-2, resp. (s_W s_x)^-2.

    Tensor hooks (``Tensor.register_hook``) and not an optimizer pre-step hook: they need
    no optimizer, so they work with odt.train or any loop and any optimizer, and they scale
    each backward's contribution once, so gradient accumulation stays right (a hook after
    accumulation would rescale the running sum). Only tensors that require grad when it is
    called get a hook (choose what trains first). Hooks do not survive ``copy.deepcopy``.
    Returns a ``QAS`` handle; ``handle.remove()`` undoes it.
    """
    if not isinstance(model, Int8Model):
        raise TypeError(f"qas_ takes an Int8Model (from odt.quant.to_int8), got "
                        f"{type(model).__name__}; a float model's gradients need no QAS")
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    factors = {n: f for n, f in qas_scales(model).items() if n in params}
    if not factors:
        raise ValueError("no integer weight or bias of this Int8Model requires grad: choose "
                         "what trains first (requires_grad_), then call qas_")
    if any(isinstance(h, _Scale) for name in factors
           for h in (params[name]._backward_hooks or {}).values()):
        raise ValueError("qas_ was already applied to this model (its gradients would be "
                         "scaled twice); call remove() on the handle it returned first")
    handles = [params[name].register_hook(_Scale(f)) for name, f in factors.items()]
    return QAS(factors, handles)


def round_after_step_(optimizer: torch.optim.Optimizer, model: Int8Model,
                      rounding: str = "nearest", seed: int = 0) -> RemovableHandle:
    """After every ``optimizer.step()``, re-round ``model``'s integers in place
    (``Int8Model.round_``): the device stores int8 weights and int32 biases, so an update
    survives only as whole units ("nearest": updates under half a unit vanish;
    "stochastic": unbiased, from a generator seeded by ``seed``). Returns the hook handle."""
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer, got "
                        f"{type(optimizer).__name__}; build one with make_optimizer")
    if not isinstance(model, Int8Model):
        raise TypeError(f"round_after_step_ takes an Int8Model (from odt.quant.to_int8), got "
                        f"{type(model).__name__}")
    check_choice("rounding", rounding, ROUNDINGS)
    generator = torch.Generator().manual_seed(check_seed("seed", seed))

    def hook(opt: torch.optim.Optimizer, args: object, kwargs: object) -> None:
        model.round_(rounding, generator)

    return optimizer.register_step_post_hook(hook)


def norm_ratios(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
                per_channel: bool = False) -> dict[str, dict[str, float | torch.Tensor]]:
    """||grad|| / ||tensor|| of every trainable conv/linear weight and bias for one batch,
    in the units the model stores (float units for a float model, integer units for an
    Int8Model, after QAS if applied), by layer path: {"stem.0": {"weight": r, "bias": r}}.

    Runs in eval mode (no BatchNorm statistics move) and leaves ``.grad`` untouched.
    ``per_channel=True`` gives (C,) tensors, one ratio per output channel.
    """
    loss_fn = F.cross_entropy if loss_fn is None else loss_fn
    tensors = {}
    for path, layer in _layers(model).items():
        for kind in ("weight", "bias"):
            p = getattr(layer, kind, None)
            if isinstance(p, torch.Tensor) and p.requires_grad:
                tensors[(path, kind)] = p
    if not tensors:
        raise ValueError(f"{type(model).__name__} has no trainable conv or linear weight or "
                         "bias; set requires_grad=True on the ones to measure")
    with eval_mode(model):
        loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, list(tensors.values()), allow_unused=True)
    out: dict[str, dict[str, float | torch.Tensor]] = {}
    for (path, kind), p, g in zip(tensors, tensors.values(), grads, strict=True):
        g = torch.zeros_like(p) if g is None else g
        if per_channel:
            ratio = _channel_norms(g) / _channel_norms(p.detach())
            out.setdefault(path, {})[kind] = ratio
        else:
            out.setdefault(path, {})[kind] = float(g.double().norm() / p.detach().double().norm())
    return out


def _channel_norms(t: torch.Tensor) -> torch.Tensor:
    return t.double().reshape(t.shape[0], -1).norm(dim=1)


def _layers(model: nn.Module) -> dict[str, nn.Module]:
    if isinstance(model, Int8Model):
        return {path: m for path, m in model.named_modules()
                if isinstance(m, (QLayer, FloatHead))}
    return {path: m for path, m in model.named_modules()
            if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear))}

