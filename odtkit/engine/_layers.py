"""The lean engine's layers: stock module classes whose forward keeps only what the
plan's backward needs (the contract is in the package docstring, ``odtkit.engine``).

A lean layer decides at call time, from ``requires_grad``, what it keeps; without a
graph it runs the stock op. Layers are swapped in by exact type (``LEAN_TYPES``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.utils import _pair

from ._ops import BatchNormFrozen, ClampMask, ConvNoInput, LinearNoInput, _mode_on, fast_apply
from ._ops_act import (
    DropoutMask,
    MaxPoolIndex,
    SignStep,
    dropout_applies,
    max_pool_fits,
)
from ._sparse import ConvSelect, LinearSelect, Selection

# the ops the layers call, rebound by ``use_ops``: the Python autograd Functions of _ops,
# or their compiled twins (csrc/lean_ops.cpp, loaded by ``native``)
_clamp_mask = fast_apply(ClampMask)
_conv = fast_apply(ConvNoInput)
_linear = fast_apply(LinearNoInput)
_bn_frozen = fast_apply(BatchNormFrozen)
_max_pool = fast_apply(MaxPoolIndex)
_PYTHON_OPS = {"_clamp_mask": _clamp_mask, "_conv": _conv, "_linear": _linear,
               "_bn_frozen": _bn_frozen, "_max_pool": _max_pool}
BACKENDS = ("python", "native")
backend = "python"  # which set the layers call now


def _native_ops() -> dict[str, Callable]:
    from . import native

    ops = native.ops()
    return {"_clamp_mask": ops.clamp_mask, "_conv": ops.conv, "_linear": ops.linear,
            "_bn_frozen": ops.batch_norm_frozen, "_max_pool": ops.max_pool_index}


def use_ops(which: str) -> str:
    """Make the lean layers call the "python" or the "native" (compiled, loaded by
    ``odtkit.engine.native``) ops; returns the set used before. Both keep the same
    tensors and give the same gradients."""
    global backend
    if which not in BACKENDS:
        raise ValueError(f"lean ops {which!r}: choose 'python' or 'native'")
    table = _native_ops() if which == "native" else _PYTHON_OPS
    globals().update(table)
    before, backend = backend, which
    return before


sign_step = fast_apply(SignStep)
_dropout = fast_apply(DropoutMask)


def plain(forward: Callable) -> Callable:
    """A lean layer's forward with torch-function handling off for a plain-tensor input:
    its ops are the engine's own, and the lean functional mode (pushed by a custom forward
    around it) would only add Python work to each of them."""

    @functools.wraps(forward)
    def run(self, x, *args, **kwargs):
        if type(x) is torch.Tensor and _mode_on():
            with torch._C.DisableTorchFunction():
                return forward(self, x, *args, **kwargs)
        return forward(self, x, *args, **kwargs)

    return run


def _param(module: nn.Module, name: str) -> torch.Tensor | None:
    """``module.<name>`` read from its parameter dict (a parametrized one: the attribute)."""
    params = module._parameters
    return params[name] if name in params else getattr(module, name)


def wants_graph(*tensors: torch.Tensor | None) -> bool:
    """True if autograd records a graph through any of ``tensors`` here."""
    if not torch.is_grad_enabled():
        return False
    for t in tensors:
        if t is not None and t.requires_grad:
            return True
    return False


def clamp(x: torch.Tensor, lo: float, hi: float | None, inplace: bool) -> torch.Tensor:
    """Lean clamp/ReLU; the stock op when no graph is needed (nothing saved either way)."""
    if not wants_graph(x) or not x.is_floating_point():
        if inplace:
            return x.clamp_(min=lo, max=hi)
        return x.clamp(min=lo, max=hi)
    return _clamp_mask(x, lo, hi, inplace)


def smooth(x: torch.Tensor, kind: str, inplace: bool, mode: str, approximate: str = "none",
           stock=None) -> torch.Tensor:
    """A smooth activation: MobileTL's sign step when ``mode`` is "mobiletl" and a graph is
    recorded, else ``stock()`` (the exact backward needs the whole input: torch keeps it)."""
    if mode == "mobiletl" and x.is_floating_point() and wants_graph(x):
        return sign_step(x, kind, inplace, approximate)
    return stock()


# ---------------------------------------------------------------- activations


class LeanReLU(nn.ReLU):
    """nn.ReLU saving a bit-packed mask."""

    @plain
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return clamp(x, 0.0, None, self.inplace)


class LeanHardtanh(nn.Hardtanh):
    """nn.Hardtanh saving a bit-packed mask of min_val < x < max_val."""

    @plain
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return clamp(x, self.min_val, self.max_val, self.inplace)


class LeanReLU6(nn.ReLU6):
    """nn.ReLU6 saving a bit-packed mask of 0 < x < 6."""

    @plain
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return clamp(x, 0.0, 6.0, self.inplace)


class LeanHardswish(nn.Hardswish):
    """nn.Hardswish: exact (torch keeps the input), or MobileTL's 1-bit sign step."""

    lean_activation_grad = "exact"

    @plain
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return smooth(x, "hardswish", self.inplace, self.lean_activation_grad,
                      stock=lambda: F.hardswish(x, self.inplace))


class LeanSiLU(nn.SiLU):
    """nn.SiLU: exact (torch keeps the input), or MobileTL's 1-bit sign step."""

    lean_activation_grad = "exact"

    @plain
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return smooth(x, "silu", self.inplace, self.lean_activation_grad,
                      stock=lambda: F.silu(x, self.inplace))


class LeanGELU(nn.GELU):
    """nn.GELU: exact (torch keeps the input), or MobileTL's 1-bit sign step."""

    lean_activation_grad = "exact"

    @plain
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return smooth(x, "gelu", False, self.lean_activation_grad, self.approximate,
                      stock=lambda: F.gelu(x, approximate=self.approximate))


class LeanDropout(nn.Dropout):
    """nn.Dropout keeping a bit mask of the kept elements (torch keeps the float noise);
    same random draws, output and gradients as torch's."""

    @plain
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if dropout_applies(x, self.p, self.training) and wants_graph(x):
            return _dropout(x, float(self.p), self.inplace)
        return F.dropout(x, self.p, self.training, self.inplace)


class LeanMaxPool2d(nn.MaxPool2d):
    """nn.MaxPool2d keeping the argmax's position within its window as uint8 (windows of
    at most 256 positions, dilation 1) where torch keeps its input and int64 indices."""

    @plain
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kernel, dilation = _pair(self.kernel_size), _pair(self.dilation)
        if (self.return_indices or not max_pool_fits(kernel, dilation) or not wants_graph(x)
                or not x.is_floating_point() or not x.is_cpu):
            return super().forward(x)
        stride = _pair(self.stride if self.stride is not None else self.kernel_size)
        return _max_pool(x, kernel, stride, _pair(self.padding), self.ceil_mode)


# ---------------------------------------------------------------- conv, linear, norm


class LeanLinear(nn.Linear):
    """nn.Linear that saves its input only when its weight trains (of a channel-sparse
    weight, only the selected input features)."""

    lean_channels: Selection | None = None

    @plain
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not wants_graph(x, self.weight, self.bias):
            return F.linear(x, self.weight, self.bias)
        if self.lean_channels is not None:
            return LinearSelect.apply(x, self.weight, self.bias, self.lean_channels)
        return _linear(x, self.weight, self.bias)


class LeanConv:
    """Shared forward of the lean Conv1d/2d/3d: padding modes, 'same'/'valid' padding."""

    lean_channels: Selection | None = None

    @plain
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = _param(self, "weight"), _param(self, "bias")
        if not wants_graph(x, weight, bias):
            return super().forward(x)  # the stock conv: no graph, nothing saved
        nd = len(self.kernel_size)
        padding = self.padding
        if self.padding_mode != "zeros":
            x = F.pad(x, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            padding = (0,) * nd
        elif padding == "valid":
            padding = (0,) * nd
        elif padding == "same":  # total d*(k-1) per dim, the odd one on the high side
            total = [d * (k - 1) for d, k in zip(self.dilation, self.kernel_size, strict=True)]
            low = [t // 2 for t in total]
            padding = tuple(low)
            if any(t % 2 for t in total):
                x = F.pad(x, [v for lo, t in zip(reversed(low), reversed(total), strict=True)
                              for v in (lo, t - lo)])
                padding = (0,) * nd
        unbatched = x.dim() == nd + 1
        args = (x.unsqueeze(0) if unbatched else x, weight, bias, self.stride, padding,
                self.dilation, self.groups)
        sel = self.lean_channels
        out = _conv(*args) if sel is None else ConvSelect.apply(*args, sel)
        return out.squeeze(0) if unbatched else out


class LeanConv1d(LeanConv, nn.Conv1d):
    """nn.Conv1d that saves its input only when its weight trains."""


class LeanConv2d(LeanConv, nn.Conv2d):
    """nn.Conv2d that saves its input only when its weight trains."""


class LeanConv3d(LeanConv, nn.Conv3d):
    """nn.Conv3d that saves its input only when its weight trains."""


class _LeanBatchNorm:
    """Shared forward of the lean BatchNorm1d/2d/3d.

    Only eval mode with a frozen weight differs from stock: it saves nothing. Batch
    statistics, or a weight that trains, need an input-sized tensor, so those cases run
    torch's own forward (which keeps the input, plus mean and invstd in train mode).
    """

    @plain
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:  # frozen statistics, the fine-tuning case, read directly
            weight, bias = _param(self, "weight"), _param(self, "bias")
            mean, var = self._buffers.get("running_mean"), self._buffers.get("running_var")
            if mean is not None and var is not None and (
                    weight is None or not weight.requires_grad) and wants_graph(x, bias):
                self._check_input_dim(x)
                return _bn_frozen(x, weight, bias, mean, var, self.eps)
        return super().forward(x)  # batch statistics, a weight that trains or no graph


class LeanBatchNorm1d(_LeanBatchNorm, nn.BatchNorm1d):
    """nn.BatchNorm1d saving nothing in eval mode with a frozen weight."""


class LeanBatchNorm2d(_LeanBatchNorm, nn.BatchNorm2d):
    """nn.BatchNorm2d saving nothing in eval mode with a frozen weight."""


class LeanBatchNorm3d(_LeanBatchNorm, nn.BatchNorm3d):
    """nn.BatchNorm3d saving nothing in eval mode with a frozen weight."""


# stock type -> lean type (exact types only: subclasses may have their own forward)
LEAN_TYPES: dict[type[nn.Module], type[nn.Module]] = {
    nn.ReLU: LeanReLU, nn.ReLU6: LeanReLU6, nn.Hardtanh: LeanHardtanh, nn.Linear: LeanLinear,
    nn.Conv1d: LeanConv1d, nn.Conv2d: LeanConv2d, nn.Conv3d: LeanConv3d,
    nn.BatchNorm1d: LeanBatchNorm1d, nn.BatchNorm2d: LeanBatchNorm2d,
    nn.BatchNorm3d: LeanBatchNorm3d, nn.Hardswish: LeanHardswish, nn.SiLU: LeanSiLU,
    nn.GELU: LeanGELU, nn.Dropout: LeanDropout, nn.MaxPool2d: LeanMaxPool2d,
}
SMOOTH_TYPES = (LeanHardswish, LeanSiLU, LeanGELU)  # follow plan.activation_grad
