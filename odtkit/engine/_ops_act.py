"""Autograd Functions of the lean engine beyond clamps: MobileTL's sign step for smooth
activations, dropout with a bit mask, max pooling with a small index within its window.

Each keeps what its backward needs through ``ctx.save_for_backward`` (so saved-tensor
hooks and odtkit.memory.measure see it) and nothing else. Transients are freed in an
order the memory rules (odtkit.memory._rules_lean) follow op by op.
"""

from __future__ import annotations

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


_WINDOWS: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}


def window_starts(out_hw: tuple[int, int], width: int, kernel: tuple[int, int],
                   stride: tuple[int, int], padding: tuple[int, int]
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(C, B), each (OH, OW) int64: C = h0*kw + w0 and B = h0*W + w0, where (h0, w0) is the
    top-left corner of each output position's window (padding included)."""
    key = (out_hw, width, kernel, stride, padding)
    hit = _WINDOWS.get(key)
    if hit is None:
        h0 = torch.arange(out_hw[0]).mul_(stride[0]).sub_(padding[0]).view(-1, 1)
        w0 = torch.arange(out_hw[1]).mul_(stride[1]).sub_(padding[1]).view(1, -1)
        hit = _WINDOWS[key] = (h0 * kernel[1] + w0, h0 * width + w0)
    return hit


def pool_out(size: int, kernel: int, stride: int, padding: int, ceil_mode: bool) -> int:
    """Output length of max pooling (dilation 1) along one dimension, as torch sizes it."""
    span = size + 2 * padding - kernel + (stride - 1 if ceil_mode else 0)
    out = span // stride + 1
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1  # the last window would start in the right padding
    return out


class MaxPoolIndex(torch.autograd.Function):
    """2-d max pooling (dilation 1, at most 256 positions a window) keeping, per output
    element, the argmax's position within its window as uint8 (kh*kw positions), not
    torch's int64 index into the input plane. Backward turns it back into torch's index
    and runs torch's own max_pool2d_with_indices_backward: gradients bit-identical.

    Within-window position: i = (ih - h0)*kw + (iw - w0) = idx - (idx // W)*(W - kw) - C;
    back: idx = i + (i // kw)*(W - kw) + B (see ``window_starts``).
    """

    @staticmethod
    @_internal
    def forward(ctx, x, kernel, stride, padding, ceil_mode):  # type: ignore[override]
        out, idx = torch.ops.aten.max_pool2d_with_indices(x, kernel, stride, padding, (1, 1),
                                                          ceil_mode)
        width = x.shape[-1]
        corner, base = window_starts(tuple(out.shape[-2:]), width, kernel, stride, padding)
        rows = torch.div(idx, width, rounding_mode="floor")  # (..., OH, OW) int64
        rows.mul_(width - kernel[1])
        idx.sub_(rows)
        del rows
        idx.sub_(corner)
        ctx.conf = (kernel, stride, padding, ceil_mode, x.shape, width, base)
        ctx.save_for_backward(idx.to(torch.uint8))
        return out

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        (local,) = ctx.saved_tensors
        kernel, stride, padding, ceil_mode, in_shape, width, base = ctx.conf
        pos = local.long()
        idx = torch.div(pos, kernel[1], rounding_mode="floor")
        idx.mul_(width - kernel[1])
        idx += pos
        del pos
        idx += base
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


__all__ = ["SignStep", "DropoutMask", "MaxPoolIndex", "max_pool_fits", "dropout_applies",
           "pool_out", "window_starts"]
