"""Autograd Functions of the lean engine beyond clamps: MobileTL's sign step for smooth
activations, dropout with a bit mask, max pooling with a small index within its window.

Each keeps what its backward needs through ``ctx.save_for_backward`` (so saved-tensor
hooks and odtkit.memory.measure see it) and nothing else. Transients are freed in an
order the memory rules (odtkit.memory._rules_lean) follow op by op.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ._masks import mask_from, pack_mask, unpack_mask
from ._ops import _internal

# smooth activation -> its forward (x, inplace, approximate), torch's own kernels
_SMOOTH = {
    "hardswish": lambda x, inplace, approximate: F.hardswish(x, inplace),
    "silu": lambda x, inplace, approximate: F.silu(x, inplace),
    "gelu": lambda x, inplace, approximate: F.gelu(x, approximate=approximate),
}
INPLACE_KINDS = ("hardswish", "silu")  # GELU has no in-place form


class SignStep(torch.autograd.Function):
    """MobileTL (Chiang et al., AAAI 2023): y = f(x) exactly (Hardswish, SiLU or GELU),
    but backward uses f'(x) ~ 1[x > 0], a step at the sign of the input, so one bit per
    element is kept instead of x. dx = dy * 1[x > 0] (a NaN input passes its gradient).
    """

    @staticmethod
    @_internal
    def forward(ctx, x, kind, inplace, approximate):  # type: ignore[override]
        ctx.shape, ctx.n = x.shape, x.numel()
        # (n,) bool 1[x > 0] (NaN too), before an in-place forward overwrites x
        mask = mask_from(torch.relu, x.reshape(-1))
        inplace = inplace and kind in INPLACE_KINDS
        if inplace:
            ctx.mark_dirty(x)
        y = _SMOOTH[kind](x, inplace, approximate)
        ctx.save_for_backward(pack_mask(mask))
        return y

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        (packed,) = ctx.saved_tensors
        return grad * unpack_mask(packed, ctx.shape, ctx.n), None, None, None


class DropoutMask(torch.autograd.Function):
    """Dropout as torch computes it on CPU (noise = bernoulli(1 - p) / (1 - p), then
    x * noise: the same random draws, the same output), keeping the bit mask of the kept
    elements instead of the float noise. Backward rebuilds the noise with torch's own
    division, so dx = dy * noise bit for bit.
    """

    @staticmethod
    @_internal
    def forward(ctx, x, p, inplace):  # type: ignore[override]
        ctx.shape, ctx.n, ctx.keep = x.shape, x.numel(), 1.0 - p
        noise = torch.empty_like(x).bernoulli_(ctx.keep)  # (x.shape) 0/1
        noise.div_(ctx.keep)
        if inplace:
            ctx.mark_dirty(x)
            y = x.mul_(noise)
        else:
            y = x * noise
        ctx.save_for_backward(pack_mask(noise.bool()))
        return y

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        (packed,) = ctx.saved_tensors
        noise = unpack_mask(packed, ctx.shape, ctx.n).to(grad.dtype)
        noise.div_(ctx.keep)
        return grad * noise, None, None


def _corners(out_hw: tuple[int, int], stride: tuple[int, int],
             padding: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(h0, w0): the top-left corner of each output position's window, padding included,
    as (OH, 1) and (1, OW) int64 numpy arrays."""
    h0 = np.arange(out_hw[0], dtype=np.int64)[:, None] * stride[0] - padding[0]
    w0 = np.arange(out_hw[1], dtype=np.int64)[None, :] * stride[1] - padding[1]
    return h0, w0


class MaxPoolIndex(torch.autograd.Function):
    """2-d max pooling (dilation 1, at most 256 positions a window) keeping, per output
    element, the argmax's position within its window as uint8 (kh*kw positions), not
    torch's int64 index into the input plane. Backward turns it back into torch's index
    and runs torch's own max_pool2d_with_indices_backward: gradients bit-identical.

    With (h0, w0) the window's top-left corner, index i = ih*W + iw and position
    (ih - h0)*kw + (iw - w0) map into each other; numpy does the arithmetic outside
    torch's allocator, writing straight into the kept uint8 (forward) and into the int64
    index the kernel takes (backward), as the compiled twin's loops do.
    """

    @staticmethod
    @_internal
    def forward(ctx, x, kernel, stride, padding, ceil_mode):  # type: ignore[override]
        out, idx = torch.ops.aten.max_pool2d_with_indices(x, kernel, stride, padding, (1, 1),
                                                          ceil_mode)
        idx = idx.contiguous()
        width = x.shape[-1]
        h0, w0 = _corners(tuple(idx.shape[-2:]), stride, padding)
        local = torch.empty(idx.shape, dtype=torch.uint8)
        flat = idx.numpy()
        rows = flat // width
        local.numpy()[...] = (rows - h0) * kernel[1] + (flat - rows * width - w0)
        ctx.conf = (kernel, stride, padding, ceil_mode, x.shape)
        ctx.save_for_backward(local)
        return out

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        (local,) = ctx.saved_tensors
        kernel, stride, padding, ceil_mode, in_shape = ctx.conf
        h0, w0 = _corners(tuple(local.shape[-2:]), stride, padding)
        idx = torch.empty(local.shape, dtype=torch.int64)
        pos = local.numpy().astype(np.int64)
        rows = pos // kernel[1]
        idx.numpy()[...] = (h0 + rows) * in_shape[-1] + w0 + pos - rows * kernel[1]
        stand_in = grad.new_empty(1).expand(in_shape)  # its data goes unread
        gx = torch.ops.aten.max_pool2d_with_indices_backward(
            grad, stand_in, kernel, stride, padding, (1, 1), ceil_mode, idx)
        return gx, None, None, None, None


def max_pool_fits(kernel: tuple[int, int], dilation: tuple[int, int]) -> bool:
    """True if MaxPoolIndex handles this window (dilation 1, at most 256 positions)."""
    return dilation == (1, 1) and kernel[0] * kernel[1] <= 256


def dropout_applies(x: torch.Tensor, p: float, training: bool) -> bool:
    """True if DropoutMask stands in for F.dropout (train mode, 0 < p < 1, a float input)."""
    return training and 0.0 < p < 1.0 and x.is_floating_point() and x.numel() > 0


__all__ = ["SignStep", "DropoutMask", "MaxPoolIndex", "max_pool_fits", "dropout_applies"]
