"""Gradients in the simulated backward: which arguments of an op need one
(``needs_grad``), fresh or shared (``input_grads``), and the backward MACs of every layer
call."""

from __future__ import annotations

from ..models.summary import backward_macs
from ._rule import Rule
from ._trace import Trace


def needs_grad(x: object, rg: bytearray) -> bool:
    """Whether an op's argument (a value id, a tuple of them, or None) needs a gradient."""
    if isinstance(x, int):
        return bool(rg[x])
    if isinstance(x, tuple):
        return any(rg[v] for v in x if v is not None)
    return False


def input_grads(op, rule: Rule, flags: tuple[bool, ...], g_out: int, rg: bytearray,
                 t: Trace, alloc, refs: list[int]) -> list[tuple[int, int]]:
    """(value, gradient storage) for each argument of ``op`` that needs a gradient (a
    "reduce" is torch's sum_to: it sums, into a fresh tensor, unless the shapes match)."""
    made = []
    vbytes, out_shape = t.value_bytes, t.value_shape[op.outs[0]]
    for pos, mode in enumerate(rule.grads):
        if pos >= len(op.ins) or not flags[pos] or not mode:
            continue
        arg = op.ins[pos]
        for v in arg if isinstance(arg, tuple) else (arg,):
            if v is None or not rg[v]:
                continue
            if mode == "alias" or (mode == "reduce" and t.value_shape[v] == out_shape):
                refs[g_out] += 1
                made.append((v, g_out))
            else:
                made.append((v, alloc(vbytes[v])))
    return made


def backward_macs_of(t: Trace, rg: bytearray, trainable: frozenset[str]) -> int:
    """``backward_macs`` of every layer call: an input gradient where the layer's input
    requires one, a weight gradient where its weight trains."""
    return sum(backward_macs(
        row.macs, input_grad=row.input_value is not None and bool(rg[row.input_value]),
        weight_grad=any(n.endswith(".weight") and n in trainable for n in row.param_names))
        for row in t.layers)
