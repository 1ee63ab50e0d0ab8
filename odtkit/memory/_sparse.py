"""Channel-sparse plans (``TrainPlan.channels``) in the step model.

The lean engine's channel-sparse conv/linear (``odt.lean``) keeps, for its weight gradient,
only the input channels the selected weight entries need. A weight (out, in/g, *kernel)
with g groups whose plan selects rows R (dim 0; default all) and dim-1 slices C (default
all in/g) keeps K = |{r // (out/g) : r in R}| x |C| input channels (every group without a
dim-0 entry): a fresh tensor of the conv's input (as the conv sees it, after padding)
times K / in when K < in, the input itself when K = in. Entries on kernel dims or on a
bias change nothing kept. Backward computes the weight gradient of the reduced problem
(from the selected rows of the output gradient and of the weight, and the selected
columns of the weight) and scatters it into a zero-filled gradient of the weight's size:
those temporaries are the node's transient bytes. Any other channel-sparse parameter gets
a gradient hook that masks a clone of its gradient.

Stock autograd keeps the whole input; with either engine torch keeps ``.grad`` and the
optimizer's state at full size (zeros at frozen entries), which is what the categories
count; ``notes`` says what a store of only the selected entries would need.
"""

from __future__ import annotations

import dataclasses
import math

from torch import nn

from .._plan_channels import entries_of
from ..plans import TrainPlan
from ..units import format_bytes
from ._rules import STAND_IN_BYTES, Flags, Rule
from ._trace import Op, Trace

Entries = list[tuple[int, tuple[int, ...]]]
_LAYER_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


@dataclasses.dataclass(frozen=True)
class _Cut:
    """What a lean channel-sparse layer computes: its conv/linear op's geometry."""

    x: int  # position of the input among the op's arguments
    w: int  # position of the weight (a linear: its transpose)
    b: int  # position of the bias (-1: none)
    in_channels: int
    kept: int  # input channels kept for the weight gradient (K)
    row_share: tuple[int, int] | None  # (rows computed, out) with a dim-0 cut of groups
    col_share: tuple[int, int] | None  # (dim-1 slices computed, in/g) with a dim-1 cut


def _cut(op: Op, t: Trace, entries: Entries) -> _Cut:
    shape = t.value_shape
    if op.name == "convolution":
        x, w, b, groups = 0, 1, 2, int(op.args[8])
        out, per_group = shape[op.ins[1]][0], shape[op.ins[1]][1]
    else:  # addmm(bias, x, W^T) or mm(x, W^T): a Linear, one group
        x, w, b = (1, 2, 0) if op.name == "addmm" else (0, 1, -1)
        groups, per_group, out = 1, shape[op.ins[w]][0], shape[op.ins[w]][1]
    dims = dict(entries)
    rows, cols = dims.get(0), dims.get(1)
    chosen = len({r // (out // groups) for r in rows}) if rows else groups
    n_cols = per_group if cols is None or len(cols) == per_group else len(cols)
    return _Cut(x, w, b, groups * per_group, chosen * n_cols,
                None if chosen == groups else (chosen * (out // groups), out),
                None if n_cols == per_group else (n_cols, per_group))


def _sparse_rule(base: Rule, cut: _Cut, linear: bool) -> Rule:
    def share(nbytes: int, part: tuple[int, int] | None) -> int:
        return nbytes if part is None else nbytes * part[0] // part[1]

    def saves(op: Op, rg: Flags, t: Trace) -> tuple:
        if not rg[cut.w]:
            return ()
        if cut.kept == cut.in_channels:
            return (f"i{cut.x}",)
        return (("new", t.value_bytes[op.ins[cut.x]] * cut.kept // cut.in_channels),)

    def bwd_extra(op: Op, rg: Flags, t: Trace) -> int:
        """Bytes beyond the input gradients at the node's busiest moment: the reduced
        weight gradient and what it was computed from, as the zero-filled one is made."""
        stand_in = STAND_IN_BYTES if rg[cut.x] or (cut.b >= 0 and rg[cut.b]) else 0
        if not rg[cut.w]:
            return 0 if linear else stand_in
        w_bytes = t.value_bytes[op.ins[cut.w]]
        rows = share(w_bytes, cut.row_share)  # the selected rows of W
        reduced = share(rows, cut.col_share)  # ... and of those the selected columns
        # the reduced gradient lives to the end of the node (a linear's is the product of
        # the output gradient and the kept input; W^T is not copied)
        if linear:
            return reduced if cut.col_share else 0
        if cut.row_share is None and cut.col_share is None:
            return stand_in
        g_rows = share(t.value_bytes[op.outs[0]], cut.row_share) if cut.row_share else 0
        # the selected slices of W and the reduced gradient; with both cuts also the
        # gradient's rows widened to all columns, as the zero-filled gradient is made
        both = cut.row_share is not None and cut.col_share is not None
        return stand_in + g_rows + 2 * reduced + (rows if both else 0)

    return dataclasses.replace(base, saves=saves, bwd_extra=bwd_extra)


def sparse_rules(t: Trace, rules: list[Rule], channels: tuple, engine: str) -> list[Rule]:
    """``rules`` with the lean engine's channel-sparse conv/linear rules put in."""
    if engine != "lean" or not channels:
        return rules
    out = list(rules)
    for i, op in enumerate(t.ops):
        if op.leaf_type not in _LAYER_TYPES or op.name not in ("convolution", "addmm", "mm"):
            continue
        weight = f"{op.module}.weight" if op.module else "weight"
        if entries_of(channels, weight) or entries_of(channels, weight[:-6] + "bias"):
            out[i] = _sparse_rule(rules[i], _cut(op, t, entries_of(channels, weight)),
                                  op.name != "convolution")
    return out


def hooked_params(t: Trace, channels: tuple, engine: str) -> frozenset[str]:
    """Channel-sparse parameters whose gradient the lean engine masks through a hook (a
    clone): those that are not the weight or bias of a lean conv/linear."""
    if engine != "lean" or not channels:
        return frozenset()
    handled = set()
    for op in t.ops:
        if op.leaf_type in _LAYER_TYPES:
            prefix = f"{op.module}." if op.module else ""
            handled |= {prefix + "weight", prefix + "bias"}
    return frozenset(n for n, _, _ in channels) - handled


def notes(plan: TrainPlan, by_category: dict[str, int]) -> tuple[str, ...]:
    """What the categories mean for a channel-sparse plan, and the ideal counts."""
    if not plan.channels:
        return ()
    shape_of = dict(zip(plan.names, plan.shapes, strict=True))
    full = sum(math.prod(shape_of[n]) for n in plan.trainable)
    share = plan.trainable_numel / full if full else 0.0
    mask_bytes = sum(shape_of[n][d] for n, d, _ in plan.channels)
    return (f"channel-sparse plan: {plan.trainable_numel:,} of {full:,} trainable elements "
            f"train; gradients and optimizer state are counted full size, as torch keeps "
            f"them (zeros at frozen entries); kept for the selected entries only they would "
            f"be about {format_bytes(round(by_category['gradients'] * share))} and "
            f"{format_bytes(round(by_category['optimizer'] * share))}",
            f"channel masks: {format_bytes(mask_bytes)} (one bool vector per selected dim), "
            "not in the categories")


def masks_for(model: nn.Module, plan: TrainPlan) -> dict:
    """{parameter of ``model``: its keep-vectors} for the optimizer, as ``odt.train``
    builds them (``make_optimizer(masks=...)``)."""
    from .._plan_channels import frozen_slices

    return {p: tuple(~off for off in frozen_slices(tuple(p.shape), entries, p.device))
            for name, p in model.named_parameters()
            if (entries := entries_of(plan.channels, name))}
