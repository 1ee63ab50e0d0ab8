"""Autograd Functions of the lean engine: each keeps only what its backward needs.

Every kept tensor goes through ``ctx.save_for_backward`` so that saved-tensor hooks
(and odtkit.memory.measure) see exactly what is kept. Parameters and buffers saved
here cost no activation memory (they live anyway); they are saved so that autograd's
version check catches an in-place update between forward and backward.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from .._bits import pack_bits as pack_codes
from .._bits import unpack_bits as unpack_codes
from ._masks import apply_mask, mask_from, pack_mask, pack_pass


def _internal(forward: Callable) -> Callable:
    """Run a Function's forward with torch-function modes off: its ops are engine-internal
    (the engine's own mode would only add Python overhead to each of them)."""

    @functools.wraps(forward)
    def run(*args: Any) -> Any:
        if not _mode_on():  # nothing to switch off
            return forward(*args)
        with torch._C.DisableTorchFunction():
            return forward(*args)

    return run


_mode_on = torch._C._is_torch_function_mode_enabled  # a TorchFunctionMode is pushed


def fast_apply(fn: type[torch.autograd.Function]) -> Callable[..., Any]:
    """``fn.apply`` without its Python preamble (argument binding for ``setup_context``,
    the functorch wrapper check), which costs more than a small op at batch 1; under a
    functorch transform it is ``fn.apply`` itself."""
    base = super(torch.autograd.Function, fn).apply  # the C++ entry, bound to fn
    transforms_active = torch._C._are_functorch_transforms_active

    def apply(*args: Any) -> Any:
        return fn.apply(*args) if transforms_active() else base(*args)

    return apply


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """Bool tensor -> uint8 tensor of ceil(numel/8) bytes, laid out as numpy.packbits
    (the package's one bit packer, ``odtkit._bits``, with 1-bit codes)."""
    if mask.dtype != torch.bool:
        raise TypeError(f"pack_bits takes a bool tensor, got {mask.dtype}")
    return pack_codes(mask, 1)


def unpack_bits(packed: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Inverse of pack_bits: uint8 (ceil(n/8),) -> uint8 0/1 tensor of ``shape``."""
    return unpack_codes(packed, 1, math.prod(shape)).view(shape)


def _inside(y: torch.Tensor, lo: float, hi: float | None) -> torch.Tensor:
    """Where y = clamp(x, lo, hi) passes gradient, as torch's backward decides it.

    ReLU (hi None): y > 0 or NaN (torch tests the output: not y <= 0), i.e. y != 0.
    Hardtanh: torch's own hardtanh_backward decides (lo < x < hi, NaN as torch treats
    it), run on a stand-in gradient that is nonzero wherever it passes (y itself when
    lo == 0, else ones), chunk by chunk into a bool mask (``mask_from``). Contiguous y
    only; otherwise in one piece.
    """
    if hi is None:
        return y.bool() if lo == 0 else ~(y <= lo)
    grad = y if lo == 0 else y.new_ones(()).expand(y.shape)
    if not y.is_contiguous():
        return torch.ops.aten.hardtanh_backward(grad, y, lo, hi).bool()
    return mask_from(lambda g, v: torch.ops.aten.hardtanh_backward(g, v, lo, hi),
                     grad.reshape(-1), y.view(-1))


class ClampMask(torch.autograd.Function):
    """y = clamp(x, lo, hi) (hi None: ReLU); saves the bit-packed mask of lo < x < hi.

    The mask is read from y (``_masks.pack_pass``: lo < y < hi, a NaN blocked as in the
    vectorized body of torch's hardtanh_backward; a ReLU's not y <= 0, a NaN passing as
    in threshold_backward). Backward multiplies the gradient by the 0/1 mask,
    so an inf/NaN gradient arriving at a clamped element gives NaN there where torch
    gives 0. The compiled twin (csrc/lean_ops.cpp) keeps and allocates the same.
    """

    @staticmethod
    @_internal
    def forward(ctx, x, lo, hi, inplace):  # type: ignore[override]
        if inplace:
            ctx.mark_dirty(x)
            y = x.clamp_(min=lo, max=hi)
        else:
            y = x.clamp(min=lo, max=hi)
        ctx.shape, ctx.n = x.shape, x.numel()
        packed = pack_pass(y, lo, hi)
        if packed is None:  # numpy cannot read y (another device or dtype): torch's ops
            packed = pack_mask(_inside(y, lo, hi))
        ctx.save_for_backward(packed)
        return y

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        (packed,) = ctx.saved_tensors
        return apply_mask(grad, packed, ctx.shape, ctx.n), None, None, None


class LinearNoInput(torch.autograd.Function):
    """y = x W^T + b; saves x only when W trains (dW = g^T x), never for dx or db."""

    @staticmethod
    @_internal
    def forward(ctx, x, weight, bias):  # type: ignore[override]
        ctx.save_for_backward(x if ctx.needs_input_grad[1] else None, weight)
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad
        g2 = grad.reshape(-1, grad.shape[-1])  # (rows, out)
        gx = grad @ weight if need_x else None  # (..., in)
        gw = g2.t() @ x.reshape(-1, x.shape[-1]) if need_w else None  # (out, in)
        gb = g2.sum(0) if need_b else None  # (out,)
        return gx, gw, gb


_TRANSPOSED = {3: F.conv_transpose1d, 4: F.conv_transpose2d, 5: F.conv_transpose3d}
_CONVS = {3: F.conv1d, 4: F.conv2d, 5: F.conv3d}  # by the input's dim


def _pointwise(weight: torch.Tensor, stride: tuple, padding: tuple, groups: int) -> bool:
    """True for a 1x1 (1, 1x1x1) conv of stride 1, no padding, one group."""
    return (groups == 1 and all(k == 1 for k in weight.shape[2:]) and all(s == 1 for s in stride)
            and all(p == 0 for p in padding))


class ConvNoInput(torch.autograd.Function):
    """N-d convolution (zero padding); saves its input only when the weight trains.

    With the weight frozen, dx is the transposed convolution of dy (torch's own kernel:
    bit-identical to convolution_backward's dx, and faster than running that on a
    shape-only stand-in input; for a 1x1 conv the other way round) and db the sum of dy
    over batch and space (rounding-level differences from torch's summation order).
    """

    @staticmethod
    @_internal
    def forward(ctx, x, weight, bias, stride, padding, dilation, groups):  # type: ignore[override]
        ctx.conf = (stride, padding, dilation, groups)
        ctx.in_shape = x.shape
        ctx.save_for_backward(x if ctx.needs_input_grad[1] else None, weight)
        return _CONVS[x.dim()](x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        x, weight = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.conf
        need = ctx.needs_input_grad[:3]
        if x is None:  # frozen weight: nothing of the input is needed
            gx = gb = None
            if need[0] and _pointwise(weight, stride, padding, groups):
                # a 1x1 conv: torch's own convolution_backward (faster than a transposed
                # conv here) on a shape-only stand-in, a stride-0 view of a weight element
                # (no allocation; its data goes unread)
                stand_in = weight.as_strided([1], [1]).expand(ctx.in_shape)
                gx = torch.ops.aten.convolution_backward(
                    grad, stand_in, weight, None, stride, padding, dilation, False,
                    [0] * len(stride), groups, [True, False, False])[0]
            elif need[0]:
                spatial = ctx.in_shape[2:]
                extra = [n - ((o - 1) * s - 2 * p + d * (k - 1) + 1) for n, o, s, p, d, k in zip(
                    spatial, grad.shape[2:], stride, padding, dilation, weight.shape[2:],
                    strict=True)]  # output padding that restores the input's size
                gx = _TRANSPOSED[grad.dim()](grad, weight, None, stride, padding, extra,
                                             groups, dilation)
            if need[2]:
                gb = grad.sum([0, *range(2, grad.dim())])
            return gx, None, gb, None, None, None, None
        bias_sizes = [weight.shape[0]] if need[2] else None
        gx, gw, gb = torch.ops.aten.convolution_backward(
            grad, x, weight, bias_sizes, stride, padding, dilation, False,
            [0] * len(stride), groups, list(need))
        return gx, gw, gb, None, None, None, None


class BatchNormFrozen(torch.autograd.Function):
    """Batch norm with running statistics and a frozen (or no) weight: y = x*a + b.

    dx = dy * a needs only parameters and buffers, db = sum(dy): nothing of input size
    is saved. Backward runs torch's own kernel (which reads no input data for dx and
    db), so gradients are bit-identical to stock.
    """

    @staticmethod
    @_internal
    def forward(ctx, x, weight, bias, mean, var, eps):  # type: ignore[override]
        ctx.eps = eps
        ctx.save_for_backward(weight, mean, var)
        # F.batch_norm's own call for eval statistics, without its Python checks
        return torch.batch_norm(x, weight, bias, mean, var, False, 0.0, eps,
                                torch.backends.cudnn.enabled)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        weight, mean, var = ctx.saved_tensors
        need_x, _, need_b = ctx.needs_input_grad[:3]
        # grad stands in for the input: same shape and layout, and its data goes unread
        gx, _, gb = torch.ops.aten.native_batch_norm_backward(
            grad, grad, weight, mean, var, None, None, False, ctx.eps, [need_x, False, need_b])
        return gx, None, gb, None, None, None
