"""What autograd keeps per aten op, and what each op's backward allocates.

A rule answers, for one op and the requires-grad flags of its tensor arguments:
- ``saves``: which arguments/outputs the backward node keeps ("i0" = argument 0, "o1" =
  output 1), plus tensors it creates only to keep ("new" entries, in bytes);
- ``grads``: per differentiable argument, whether its gradient is a fresh tensor
  ("alloc"), the incoming gradient passed on unchanged or as a view ("alias"), or a sum
  over broadcast dimensions ("reduce": fresh unless the shapes match);
- transient bytes beyond inputs/outputs at the op's busiest moment, forward and backward.
Stock rules follow PyTorch's derivative formulas (tools/autograd/derivatives.yaml): e.g.
a convolution keeps its input and weight whatever trains, addmm keeps mat1 only when mat2
needs a gradient. Lean rules (``_rules_lean``) follow odtkit.engine (see the shared lean contract).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from ._rule import Flags, Rule, keep, numel
from ._rules_lean import LEAN_CONV_TYPES, STAND_IN_BYTES, lean_rule
from ._rules_nn import NN_RULES
from ._trace import Op, Trace, UnsupportedOperation, where

__all__ = ["STOCK", "STAND_IN_BYTES", "FP8_CAST_TYPES", "Flags", "Rule", "rule_for",
           "rules_of", "supported_ops", "fp8_rule_for"]
_keep = keep
_numel = numel


def _in_bytes(op: Op, t: Trace) -> int:
    return t.value_bytes[op.ins[0]]


_NONE = Rule(differentiable=False)
_VIEW = Rule(grads=("alias",))
_SAVE_IN = Rule(saves=_keep("i0"), grads=("alloc",))
_SAVE_OUT = Rule(saves=_keep("o0"), grads=("alloc",))
_NO_SAVE = Rule(grads=("alloc",))


def _mm_saves(a: int, b: int) -> Callable[[Op, Flags, Trace], tuple]:
    """mat1 (argument a) is kept for mat2's gradient and mat2 (argument b) for mat1's."""
    return lambda op, rg, t: ((f"i{a}",) if rg[b] else ()) + ((f"i{b}",) if rg[a] else ())


def _hardtanh_inplace_saves(op: Op, rg: Flags, t: Trace) -> tuple:
    # autograd clones the input before overwriting it (the backward needs the original)
    return (("new", _in_bytes(op, t)),)


def _neg_then_sum(op: Op, rg: Flags, t: Trace) -> int:
    out_bytes = t.value_bytes[op.outs[0]]
    return out_bytes if rg[1] and t.value_bytes[op.ins[1]] != out_bytes else 0


STOCK: dict[str, Rule] = {
    # linear algebra
    "convolution": Rule(saves=_keep("i0", "i1"), grads=("alloc", "alloc", "alloc")),
    "addmm": Rule(saves=_mm_saves(1, 2), grads=("reduce", "alloc", "alloc")),
    "mm": Rule(saves=_mm_saves(0, 1), grads=("alloc", "alloc")),
    # without a graph the batch statistics are dropped inside torch.batch_norm
    "native_batch_norm": Rule(saves=_keep("i0", "i1", "i3", "i4", "o1", "o2"),
                              grads=("alloc", "alloc", "alloc"), skipped_without_grad=(1, 2)),
    # activations
    "relu": _SAVE_OUT, "relu_": _SAVE_OUT, "sigmoid": _SAVE_OUT, "tanh": _SAVE_OUT,
    "_softmax": _SAVE_OUT, "_log_softmax": _SAVE_OUT,
    "hardtanh": _SAVE_IN, "leaky_relu": _SAVE_IN, "elu": _SAVE_IN, "silu": _SAVE_IN,
    "gelu": _SAVE_IN, "hardswish": _SAVE_IN, "hardsigmoid": _SAVE_IN,
    "hardtanh_": Rule(saves=_hardtanh_inplace_saves, grads=("alloc",)),
    # pooling and reductions
    # on CPU, max pooling of an input that needs no gradient computes no indices
    "max_pool2d_with_indices": Rule(saves=_keep("i0", "o1"), grads=("alloc",),
                                    skipped_without_grad=(1,)),
    "avg_pool2d": _SAVE_IN, "_adaptive_avg_pool2d": _SAVE_IN,
    "mean": _NO_SAVE, "sum": _VIEW,
    # arithmetic
    "add": Rule(grads=("reduce", "reduce")), "add_": Rule(grads=("reduce", "reduce")),
    # -grad, then summed over broadcast dimensions when ``other`` was smaller
    "sub": Rule(grads=("reduce", "alloc"), bwd_extra=_neg_then_sum),
    # mul and div (by a tensor or a number), in place or not: _rules_nn
    # shapes
    "view": _VIEW, "_unsafe_view": _VIEW, "t": _VIEW, "transpose": _VIEW, "permute": _VIEW,
    "unsqueeze": _VIEW, "squeeze": _VIEW, "expand": _VIEW, "alias": _VIEW, "clone": _VIEW,
    # the gradient of a slice is a zero tensor of the whole input with the slice filled in
    "slice": _NO_SAVE, "select": _NO_SAVE, "cat": Rule(grads=("alias",)),
    # a dtype cast (autocast's copies): the gradient is cast back, a fresh tensor
    "_to_copy": _NO_SAVE,
    # the loss
    "nll_loss_forward": Rule(saves=_keep("i0", "i1", "o1"), grads=("alloc",)),
    # no gradient flows through these
    **{name: _NONE for name in (
        "empty", "empty_like", "zeros", "zeros_like", "ones", "ones_like", "full", "arange",
        "remainder", "bernoulli_", "bernoulli", "fill_", "zero_", "detach", "lift_fresh",
        "rand", "randn", "rand_like", "randn_like", "gt", "lt", "ge", "le", "eq", "ne",
    )},
    **NN_RULES,  # activations in place, norms, dropout, embeddings, shapes, attention, RNNs
}


def rule_for(op: Op, engine: str, activation_grad: str = "exact") -> Rule | None:
    """The rule for ``op`` under ``engine`` ("pytorch" or "lean"; the lean engine's smooth
    activations follow ``activation_grad``, the plan's); None if not modeled."""
    if engine == "lean":
        lean = lean_rule(op, activation_grad)
        if lean is not None:
            return lean
    return STOCK.get(op.name)


def supported_ops() -> list[str]:
    """Names of the aten ops the memory model has rules for."""
    return sorted(STOCK)


# ---------------------------------------------------------------- fp8 casts


def _fp8_copies(*slots: tuple[int, int]) -> Callable[[Op, Flags, Trace], tuple]:
    """A conv/linear under ``fp8_autocast`` runs on fresh fp8 copies of its input and
    weight and keeps those (1 byte per element) where stock autograd keeps the originals:
    ``slots`` pairs (argument kept, argument whose gradient needs it; -1: always)."""
    def saves(op: Op, rg: Flags, t: Trace) -> tuple:
        return tuple(("new", _numel(t, op.ins[kept])) for kept, needs in slots
                     if needs < 0 or rg[needs])
    return saves


FP8_CAST_TYPES: dict[str, tuple[type, ...]] = {
    "convolution": LEAN_CONV_TYPES, "addmm": (nn.Linear,), "mm": (nn.Linear,)}
_FP8: dict[str, Rule] = {
    "convolution": Rule(saves=_fp8_copies((0, -1), (1, -1)), grads=("alloc", "alloc", "alloc")),
    "addmm": Rule(saves=_fp8_copies((1, 2), (2, 1)), grads=("reduce", "alloc", "alloc")),
    "mm": Rule(saves=_fp8_copies((0, 1), (1, 0)), grads=("alloc", "alloc")),
}


def fp8_rule_for(op: Op) -> Rule | None:
    """The rule for ``op`` in a step under ``fp8_autocast`` (stock autograd otherwise);
    raises ValueError for a conv/matmul that does not come from nn.Conv*/nn.Linear,
    whose casts the trace cannot see."""
    kinds = FP8_CAST_TYPES.get(op.name)
    if kinds is None:
        return STOCK.get(op.name)
    if op.leaf_type not in kinds:
        raise ValueError(
            f"odt.estimate cannot model aten.{op.name} in {op.leaf_type.__qualname__} "
            f"(module {op.module!r}) at an fp8 precision: only nn.Conv1d/2d/3d and nn.Linear "
            "calls are known to go through fp8_autocast's casts; use odt.measure for this "
            "model, or estimate with an 'fp32' plan")
    return _FP8[op.name]


def rules_of(trace: Trace, engine: str, fp8: bool = False,
             activation_grad: str = "exact") -> list[Rule]:
    """The rule of every op, or one UnsupportedOperation listing every op without one,
    each with the module it runs in. ``fp8``: conv/linear keep fresh fp8 copies of their
    input and weight (``fp8_autocast``)."""
    out, missing = [], {}
    for op in trace.ops:
        rule = fp8_rule_for(op) if fp8 else rule_for(op, engine, activation_grad)
        if rule is None:
            missing.setdefault(op.name, []).append(where(op.module, op.leaf_type))
        out.append(rule)
    if missing:
        listed = "; ".join(f"aten.{name} in {', '.join(dict.fromkeys(places))}"
                           for name, places in missing.items())
        raise UnsupportedOperation(
            f"odtkit.estimate does not model {len(missing)} operation"
            f"{'s' if len(missing) > 1 else ''} of this model: {listed}. Supported aten ops: "
            f"{', '.join(supported_ops())}. measure() still works for this model.")
    return out
