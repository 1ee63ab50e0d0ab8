"""Stock rules beyond conv nets: in-place activations, LayerNorm and GroupNorm, dropout,
embeddings, the shape ops, batched matmuls, attention and the recurrent layers.

Each follows the op's formula in PyTorch's tools/autograd/derivatives.yaml and was checked
against autograd's saved-tensor hooks (tests/test_memory_archs.py):
- an in-place activation whose backward reads the result (``sigmoid_``, ``tanh_``,
  ``leaky_relu_``, ``elu_``) keeps the overwritten tensor itself; one whose backward reads
  the input (``hardswish_``, ``silu_``, ``hardsigmoid_``, ``gelu_``) keeps a clone of the
  input that autograd makes before the kernel overwrites it;
- ``mul_`` / ``div_`` keep such a clone when the other factor needs a gradient;
- ``native_layer_norm`` keeps input, weight, bias, mean and rstd whatever trains, and
  ``native_group_norm`` input, weight, mean and rstd;
- CPU training's fused attention (``_scaled_dot_product_flash_attention_for_cpu``, taken
  without dropout) keeps query, key, value, output and the logsumexp (batch x heads x
  queries), not the attention matrix the decomposed matmul-softmax path keeps;
- an LSTM layer on the CPU is one oneDNN op (``mkldnn_rnn_layer``): it keeps its input,
  weights, initial states, outputs and its workspace (sized by ``_shapes``); a GRU runs
  as its cell's ops (linear, ``unsafe_split``, in-place gates), each with its own rule.
"""

from __future__ import annotations

from ._rule import Flags, Rule, keep
from ._trace import Op, Trace

_VIEW = Rule(grads=("alias",))
_ALLOC = Rule(grads=("alloc",))
_NONE = Rule(differentiable=False)


def _clone_input(op: Op, rg: Flags, t: Trace) -> tuple:
    # autograd clones the input before an in-place kernel overwrites it
    return (("new", t.value_bytes[op.ins[0]]),)


def _inplace_factor_saves(op: Op, rg: Flags, t: Trace) -> tuple:
    """``a.mul_(b)`` / ``a.div_(b)``: b for a's gradient, a clone of a for b's."""
    if op.ins[1] is None:  # by a Python number
        return ()
    return (("i1",) if rg[0] or (rg[1] and op.name == "div_") else ()) + (
        (("new", t.value_bytes[op.ins[0]]),) if rg[1] else ())


def _div_saves(op: Op, rg: Flags, t: Trace) -> tuple:
    if op.ins[1] is None:
        return ()
    return (("i1",) if rg[0] or rg[1] else ()) + (("i0",) if rg[1] else ())


def _bmm_saves(op: Op, rg: Flags, t: Trace) -> tuple:
    a, b = (1, 2) if op.name == "baddbmm" else (0, 1)
    return ((f"i{a}",) if rg[b] else ()) + ((f"i{b}",) if rg[a] else ())


def _embedding_saves(op: Op, rg: Flags, t: Trace) -> tuple:
    return ("i1",) if rg[0] else ()  # the indices, for the weight's gradient


def _product_sum(op: Op, rg: Flags, t: Trace) -> int:
    """A broadcast factor's gradient is grad * other at the output's size, then summed
    down (squeeze-excitation's gate): that full-size product is the backward's transient."""
    if op.ins[1] is None:
        return 0
    out = t.value_bytes[op.outs[0]]
    return max((out for k in (0, 1) if rg[k] and t.value_bytes[op.ins[k]] != out), default=0)


def _div_bwd(op: Op, rg: Flags, t: Trace) -> int:
    """The divisor's gradient, -grad * ((a / b) / b), holds four tensors of the output's
    size as its last product ends (then summed down to the divisor's shape); the input
    gradients already allocated are part of that moment."""
    if op.ins[1] is None or not rg[1]:
        return 0
    grads = sum(t.value_bytes[op.ins[k]] for k in (0, 1) if rg[k])
    return max(4 * t.value_bytes[op.outs[0]] - grads, 0)


_SAVE_IN = Rule(saves=keep("i0"), grads=("alloc",))
_SAVE_OUT = Rule(saves=keep("o0"), grads=("alloc",))
_CLONE_IN = Rule(saves=_clone_input, grads=("alloc",))

ACTIVATIONS: dict[str, Rule] = {
    "sigmoid_": _SAVE_OUT, "tanh_": _SAVE_OUT, "leaky_relu_": _SAVE_OUT, "elu_": _SAVE_OUT,
    "_safe_softmax": _SAVE_OUT, "exp": _SAVE_OUT,
    "hardswish_": _CLONE_IN, "silu_": _CLONE_IN, "hardsigmoid_": _CLONE_IN, "gelu_": _CLONE_IN,
    "mish": _SAVE_IN, "softplus": _SAVE_IN,
    # elementwise math: what each derivative reads (the input, or the result)
    "abs": _SAVE_IN, "log": _SAVE_IN, "clamp": _SAVE_IN, "clamp_min": _SAVE_IN,
    "clamp_max": _SAVE_IN, "sqrt": _SAVE_OUT, "rsqrt": _SAVE_OUT,
    "pow": Rule(saves=lambda op, rg, t: ("i0",) if op.ins[1] is None else ("i0", "i1", "o0"),
                grads=("alloc", "alloc")),
    # the backward kernel makes the weight's gradient at the input's size before it sums
    # it down, whether the weight trains or not
    "_prelu_kernel": Rule(saves=keep("i0", "i1"), grads=("alloc", "alloc"),
                          bwd_extra=lambda op, rg, t: t.value_bytes[op.ins[0]]),
}

NORMS: dict[str, Rule] = {
    # (input, normalized_shape, weight, bias, eps) -> (out, mean, rstd)
    "native_layer_norm": Rule(saves=keep("i0", "i2", "i3", "o1", "o2"),
                              grads=("alloc", "", "alloc", "alloc")),
    # (input, weight, bias, N, C, HxW, groups, eps) -> (out, mean, rstd)
    "native_group_norm": Rule(saves=keep("i0", "i1", "o1", "o2"),
                              grads=("alloc", "alloc", "alloc")),
}

ARITHMETIC: dict[str, Rule] = {
    "mul": Rule(saves=lambda op, rg, t: () if op.ins[1] is None else
                (("i1",) if rg[0] else ()) + (("i0",) if rg[1] else ()),
                grads=("alloc", "alloc"), bwd_extra=_product_sum),
    "mul_": Rule(saves=_inplace_factor_saves, grads=("alloc", "alloc"), bwd_extra=_product_sum),
    "div": Rule(saves=_div_saves, grads=("alloc", "alloc"), bwd_extra=_div_bwd),
    "div_": Rule(saves=_inplace_factor_saves, grads=("alloc", "alloc"), bwd_extra=_div_bwd),
    "neg": _ALLOC, "sub_": Rule(grads=("reduce", "reduce")),
    "bmm": Rule(saves=_bmm_saves, grads=("alloc", "alloc")),
    "baddbmm": Rule(saves=_bmm_saves, grads=("reduce", "alloc", "alloc")),
    # dropout: CPU's F.dropout runs bernoulli_ / div_ / mul (rules in _rules); the fused
    # kernel keeps its boolean mask
    "native_dropout": Rule(saves=keep("o1"), grads=("alloc",)),
    "embedding": Rule(saves=_embedding_saves, grads=("alloc",)),
    "adaptive_max_pool2d": Rule(saves=keep("i0", "o1"), grads=("alloc",)),
    # masks: where keeps its condition; tril / triu / masked_fill pass a masked gradient
    "where": Rule(saves=keep("i0"), grads=("", "alloc", "alloc")),
    "tril": _ALLOC, "triu": _ALLOC,
    "masked_fill": Rule(saves=keep("i1"), grads=("alloc",)),
}

SHAPES: dict[str, Rule] = {
    **{name: _VIEW for name in (
        "_reshape_alias", "as_strided", "unfold", "transpose_", "t_", "unsqueeze_", "squeeze_",
        "view_as", "expand_as", "narrow", "flatten", "unflatten", "reshape", "contiguous",
        "movedim", "swapaxes", "swapdims", "split_with_sizes_copy", "detach_", "stack",
        "_to_copy_alias")},
    # the gradient of a piece is copied into a zero tensor of the whole input (alloc)
    **{name: _ALLOC for name in ("unbind", "split", "unsafe_split", "split_with_sizes",
                                 "unsafe_split_with_sizes", "chunk", "unsafe_chunk", "repeat",
                                 "index_select", "select_scatter")},
    **{name: _NONE for name in ("new_zeros", "new_empty", "new_ones", "full_like",
                                "scalar_tensor", "empty_strided", "isneginf", "all", "any",
                                "logical_not", "argmax", "argmin", "normal_", "uniform_",
                                "randint", "randperm")},
}


def _flash_saves(op: Op, rg: Flags, t: Trace) -> tuple:
    # query, key, value, output and logsumexp, and the attention mask (keyword-only) if any
    return ("i0", "i1", "i2", "o0", "o1", "k:attn_mask")


def _rnn_saves(op: Op, rg: Flags, t: Trace) -> tuple:
    # input, the four weights, the initial states and the four outputs (workspace last)
    return ("i0", "i1", "i2", "i3", "i4", "i5", "i6", "o0", "o1", "o2", "o3")


def _rnn_bwd(op: Op, rg: Flags, t: Trace) -> int:
    # the backward kernel computes all seven gradients; those nobody needs (frozen
    # weights, initial states) are dropped only after it returns
    return sum(t.value_bytes[op.ins[k]] for k in range(7) if not rg[k])


ATTENTION: dict[str, Rule] = {
    "_scaled_dot_product_flash_attention_for_cpu": Rule(
        saves=_flash_saves, grads=("alloc", "alloc", "alloc")),
    "mkldnn_rnn_layer": Rule(saves=_rnn_saves, grads=("alloc",) * 7, bwd_extra=_rnn_bwd),
}

NN_RULES: dict[str, Rule] = {**ACTIVATIONS, **NORMS, **ARITHMETIC, **SHAPES, **ATTENTION}

