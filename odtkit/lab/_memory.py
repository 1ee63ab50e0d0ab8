"""What lab 01's exercise checks measure: the bytes autograd really keeps for a layer."""

from __future__ import annotations

import torch
from torch import nn


def conv_saved_bytes(batch_size: int, in_channels: int, out_channels: int, size: int,
                     kernel_size: int, engine: str = "pytorch") -> int:
    """Bytes autograd really keeps for one Conv2d with a frozen weight and a trainable bias.

    Measured with saved-tensor hooks (parameters excluded): stock PyTorch keeps the input
    whatever trains; the lean engine keeps nothing here.
    """
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
    conv.weight.requires_grad_(False)
    if engine == "lean":
        from ..engine import lean
        from ..plans import plan

        conv = lean(conv, plan(conv, "bias-only"))
    return _kept(conv, torch.zeros(batch_size, in_channels, size, size))


def relu_saved_bytes(batch_size: int, channels: int, size: int, engine: str = "pytorch") -> int:
    """Bytes autograd keeps for a ReLU after a convolution (frozen weight, trainable bias),
    measured: the pair's saved bytes minus the convolution's alone."""
    from ..engine import lean
    from ..plans import plan

    conv = nn.Conv2d(channels, channels, 3, padding=1)
    conv.weight.requires_grad_(False)
    both, alone = nn.Sequential(conv, nn.ReLU()), nn.Sequential(conv)
    if engine == "lean":
        both, alone = lean(both, plan(both, "bias-only")), lean(alone, plan(alone, "bias-only"))
    x = torch.zeros(batch_size, channels, size, size)
    return _kept(both, x) - _kept(alone, x)


def _kept(module: nn.Module, x: torch.Tensor) -> int:
    params = {p.untyped_storage()._cdata for p in module.parameters()}
    kept: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage._cdata not in params:
            kept[storage._cdata] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        module(x)
    return sum(kept.values())
