"""What the lean engine (odtkit.engine) keeps per aten op: its side of the shared
lean contract, in the rule shape of ``_rule`` (see ``_rules`` for what a rule answers).

``LEAN_BY_OP`` maps an aten op name to (the leaf module types it applies to, or None for
any caller; its rule). ``_rules.rule_for`` consults it first for ``engine="lean"`` and
falls back to the stock rule.
"""

from __future__ import annotations

from torch import nn

from ._rule import Flags, Rule, keep, numel
from ._trace import Op, Trace

# what stock autograd keeps for native_batch_norm (input, weight, running stats, saved
# mean and invstd), reused where the lean BatchNorm runs torch's own batch norm
_BN_STOCK_SAVES = keep("i0", "i1", "i3", "i4", "o1", "o2")


def _lean_conv_saves(op: Op, rg: Flags, t: Trace) -> tuple:
    return ("i0",) if rg[1] else ()


STAND_IN_BYTES = 4  # the one-element tensor a lean conv expands into a shape-only input


def _lean_conv_bwd(op: Op, rg: Flags, t: Trace) -> int:
    return STAND_IN_BYTES if not rg[1] else 0  # backward runs on a stand-in of the input


def _lean_linear_saves(op: Op, rg: Flags, t: Trace) -> tuple:
    x, w = (1, 2) if op.name == "addmm" else (0, 1)
    return (f"i{x}",) if rg[w] else ()


def _lean_bn_saves(op: Op, rg: Flags, t: Trace) -> tuple:
    # batch statistics, or a weight that trains, run torch's own batch norm (same saves);
    # running statistics with a frozen weight need nothing of input size
    return _BN_STOCK_SAVES(op, rg, t) if op.args[5] or rg[1] else ()


def _mask_saves(op: Op, rg: Flags, t: Trace) -> tuple:
    return (("new", -(-numel(t, op.ins[0]) // 8)),)


def _mask_fwd(op: Op, rg: Flags, t: Trace) -> int:
    # one byte per element for the bool mask and for each int64 packing temporary (the
    # ReLU6/Hardtanh test builds its mask from two bool comparisons: also three bytes),
    # all gone before the packed mask (counted as the op's own) is made
    n = numel(t, op.ins[0])
    return 3 * n - -(-n // 8)


def _mask_bwd(op: Op, rg: Flags, t: Trace) -> int:
    return numel(t, op.ins[0])  # the unpacked 0/1 mask, one byte per element


_LEAN_CLAMP = Rule(saves=_mask_saves, grads=("alloc",), fwd_extra=_mask_fwd,
                   bwd_extra=_mask_bwd)
LEAN_CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_LEAN_BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
LEAN_BY_OP: dict[str, tuple[tuple[type, ...] | None, Rule]] = {
    "convolution": (LEAN_CONV_TYPES, Rule(saves=_lean_conv_saves, bwd_extra=_lean_conv_bwd,
                                           grads=("alloc", "alloc", "alloc"))),
    "addmm": ((nn.Linear,), Rule(saves=_lean_linear_saves, grads=("alloc", "alloc", "alloc"))),
    "mm": ((nn.Linear,), Rule(saves=_lean_linear_saves, grads=("alloc", "alloc"))),
    "native_batch_norm": (_LEAN_BN_TYPES, Rule(saves=_lean_bn_saves,
                                               grads=("alloc", "alloc", "alloc"),
                                               skipped_without_grad=(1, 2))),
    # functional and module ReLU / ReLU6 / Hardtanh alike
    "relu": (None, _LEAN_CLAMP), "relu_": (None, _LEAN_CLAMP),
    "hardtanh": (None, _LEAN_CLAMP), "hardtanh_": (None, _LEAN_CLAMP),
}
