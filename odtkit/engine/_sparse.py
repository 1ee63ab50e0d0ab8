"""Channel-sparse conv and linear ops: keep only the input channels the selected weight
entries need (a sparse update at a channel ratio, Lin et al. 2022).

A weight (out, in/groups, *kernel) whose plan selects input channels C (dim 1) and/or
output channels R (dim 0) needs, for its gradient, the input channels of the groups
that hold a selected output channel, and of those only the slices in C:

    kept input channels = {g * in_per_group + c : g in groups of R, c in C}

- full conv / Linear, input channels selected: only those channels of the input;
- depthwise conv (groups == in), its channels selected (dim 0): only those channels;
- full conv / Linear, output channels selected: the whole input (groups == 1 puts every
  output channel in the one group), so that cut saves no activation memory. In the
  paper's memory model it saves gradient and optimizer state, which a device stores for
  the selected entries only; here ``.grad`` and the optimizer's state stay full size,
  zero at frozen entries (the memory report counts them so, and its notes give the
  selected-entries count).

Backward computes the weight gradient of the reduced problem (the kept input, the
selected rows and columns of the weight, the groups that hold them) with torch's own
convolution_backward / matmul, scatters it into a zero tensor of the weight's shape and
zeroes every unselected entry, so the gradient equals stock autograd's, masked (to
rounding: the reductions run over fewer terms). dx and db are stock.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .._plan_channels import entries_of, frozen_slices, zero_frozen_
from ..plans import TrainPlan
from ._ops import _internal


@dataclass(frozen=True)
class Selection:
    """What a channel-sparse conv/linear keeps and computes; tensors are int64 indices."""

    frozen: tuple[torch.Tensor, ...]  # bool, broadcast to the weight: True where frozen
    bias_frozen: tuple[torch.Tensor, ...]  # the same for the bias (empty: it trains wholly)
    inputs: torch.Tensor | None  # input channels kept for backward; None: the whole input
    rows: torch.Tensor | None  # weight rows (output channels) computed; None: all
    cols: torch.Tensor | None  # weight dim-1 slices computed; None: all
    groups: int  # groups of the reduced problem

    @property
    def kept_channels(self) -> int | None:
        """How many input channels backward keeps (None: all of them)."""
        return None if self.inputs is None else len(self.inputs)


def selection(weight_shape: tuple[int, ...], groups: int, frozen: tuple[torch.Tensor, ...],
              rows: tuple[int, ...] | None, cols: tuple[int, ...] | None,
              bias_frozen: tuple[torch.Tensor, ...], device: torch.device) -> Selection:
    """The Selection of a weight with ``groups`` groups whose plan selects output channels
    ``rows`` (dim 0) and dim-1 slices ``cols`` (None: no entry on that dim); ``frozen``:
    ``frozen_slices`` of the weight (entries on kernel dims only mask, keeping all input)."""
    out, per_group = weight_shape[0], weight_shape[1]
    rows_per_group = out // groups
    chosen = sorted({r // rows_per_group for r in rows}) if rows else list(range(groups))
    row_idx = None if len(chosen) == groups else [
        g * rows_per_group + j for g in chosen for j in range(rows_per_group)]
    col_idx = None if cols is None or len(cols) == per_group else list(cols)
    inputs = None
    if row_idx is not None or col_idx is not None:
        inputs = [g * per_group + c for g in chosen
                  for c in (range(per_group) if col_idx is None else col_idx)]

    def index(values: list[int] | None) -> torch.Tensor | None:
        return None if values is None else torch.tensor(values, dtype=torch.long,
                                                         device=device)

    return Selection(frozen, bias_frozen, index(inputs), index(row_idx), index(col_idx),
                     len(chosen))


def _place(part: torch.Tensor, sel: Selection, shape: torch.Size) -> torch.Tensor:
    """The reduced weight gradient scattered into zeros of ``shape``, unselected entries 0."""
    if sel.cols is not None:
        wide = part.new_zeros((part.shape[0], *shape[1:]))
        part = wide.index_copy_(1, sel.cols, part)
    if sel.rows is not None:
        part = part.new_zeros(shape).index_copy_(0, sel.rows, part)
    return zero_frozen_(part, sel.frozen)


def _masked(grad: torch.Tensor | None, frozen: tuple[torch.Tensor, ...]) -> torch.Tensor | None:
    return grad if grad is None or not frozen else zero_frozen_(grad, frozen)


class ConvSelect(torch.autograd.Function):
    """N-d convolution (zero padding) keeping only the input channels ``sel`` needs."""

    @staticmethod
    @_internal
    def forward(ctx, x, weight, bias, stride, padding, dilation, groups, sel):  # type: ignore[override]
        ctx.conf = (stride, padding, dilation, groups)
        ctx.in_shape, ctx.sel = x.shape, sel
        kept = None
        if ctx.needs_input_grad[1]:
            kept = x if sel.inputs is None else x.index_select(1, sel.inputs)
        ctx.save_for_backward(kept, weight)
        conv = {3: F.conv1d, 4: F.conv2d, 5: F.conv3d}[x.dim()]
        return conv(x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        kept, weight = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.conf
        sel: Selection = ctx.sel
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        nd = len(stride)
        gx = gw = gb = None
        if need_x or need_b:  # shape-only stand-in: neither reads the input's data
            stand_in = grad.new_empty(1).expand(ctx.in_shape)
            gx, _, gb = torch.ops.aten.convolution_backward(
                grad, stand_in, weight, [weight.shape[0]] if need_b else None, stride,
                padding, dilation, False, [0] * nd, groups, [need_x, False, need_b])
        if need_w:
            g_part, w_part = grad, weight
            if sel.rows is not None:
                g_part, w_part = grad.index_select(1, sel.rows), weight.index_select(0, sel.rows)
            if sel.cols is not None:
                w_part = w_part.index_select(1, sel.cols)
            _, part, _ = torch.ops.aten.convolution_backward(
                g_part, kept, w_part, None, stride, padding, dilation, False, [0] * nd,
                sel.groups, [False, True, False])
            gw = _place(part, sel, weight.shape)
        return gx, gw, _masked(gb, sel.bias_frozen), None, None, None, None, None


class LinearSelect(torch.autograd.Function):
    """y = x W^T + b keeping only the input features (last dim) ``sel`` needs."""

    @staticmethod
    @_internal
    def forward(ctx, x, weight, bias, sel):  # type: ignore[override]
        ctx.sel = sel
        kept = None
        if ctx.needs_input_grad[1]:
            kept = x if sel.inputs is None else x.index_select(-1, sel.inputs)
        ctx.save_for_backward(kept, weight)
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        kept, weight = ctx.saved_tensors
        sel: Selection = ctx.sel
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        g2 = grad.reshape(-1, grad.shape[-1])  # (rows, out)
        gx = grad @ weight if need_x else None  # (..., in)
        gw = None
        if need_w:
            part = g2.t() @ kept.reshape(-1, kept.shape[-1])  # (out, kept features)
            gw = _place(part, sel, weight.shape)
        gb = g2.sum(0) if need_b else None  # (out,)
        return gx, gw, _masked(gb, sel.bias_frozen), None


def attach(model: nn.Module, plan: TrainPlan, layer_types: tuple[type, ...]) -> None:
    """Give every lean conv/linear of ``model`` its ``lean_channels`` Selection (None where
    the plan selects no channels of it); any other channel-sparse parameter gets a
    gradient hook that zeroes its unselected entries (hooks do not survive a deepcopy:
    re-lean a copy)."""
    params = dict(model.named_parameters())
    masks = {n: frozen_slices(tuple(p.shape), entries_of(plan.channels, n), p.device)
             for n, p in params.items() if entries_of(plan.channels, n)}
    handled = set()
    for name, module in model.named_modules():
        if not isinstance(module, layer_types):
            continue
        prefix = f"{name}." if name else ""
        weight, bias = prefix + "weight", prefix + "bias"
        module.lean_channels = None
        if weight not in masks and bias not in masks:
            continue
        dims = dict(entries_of(plan.channels, weight))
        module.lean_channels = selection(
            tuple(module.weight.shape), getattr(module, "groups", 1), masks.get(weight, ()),
            dims.get(0), dims.get(1), masks.get(bias, ()), module.weight.device)
        handled |= {weight, bias}
    for name, frozen in masks.items():
        if name not in handled:
            params[name].register_hook(functools.partial(_zero_frozen, frozen))


def _zero_frozen(frozen: tuple[torch.Tensor, ...], grad: torch.Tensor) -> torch.Tensor:
    return zero_frozen_(grad.clone(), frozen)
