"""What the lean engine (odtkit.engine) keeps per aten op: its side of the shared
lean contract, in the rule shape of ``_rule`` (see ``_rules`` for what a rule answers).

``LEAN_BY_OP`` maps an aten op name to (the leaf module types it applies to, or None for
any caller; its rule); ``MOBILETL_BY_OP`` adds the smooth activations under a plan with
``activation_grad="mobiletl"``. ``lean_rule(op, activation_grad)`` is what
``_rules.rule_for`` consults first for ``engine="lean"`` (it falls back to the stock rule).

Transients follow the engine's code op by op (a measured step reads live bytes as each
top-level op ends; n elements, k = ceil(n/8) packed bytes, see odtkit.engine._masks):
- ReLU / ReLU6 / Hardtanh mask: written from the output straight into the kept bytes (the
  compiled op's loop, or numpy outside torch's allocator in the Python op): nothing beside
  them. Backward multiplies the gradient by the unpacked bits into the input gradient
  (the loop, or numpy): nothing beside it either.
- MobileTL sign mask: relu(x) chunk by chunk into a bool mask, before an in-place kernel
  overwrites x (``_float_test``), then packing. Backward as a ReLU's.
- Dropout: the float noise comes from stock's own ops (empty_like, bernoulli_, div_);
  after the multiply, its bool (n) while it is packed; backward rebuilds the float noise
  (4n) beside the input gradient.
- Max pooling: the position within each window is written as uint8 (m for m outputs,
  kept) from torch's int64 indices (8m) while they live (the compiled loop, or numpy
  outside torch's allocator). Backward writes the int64 index (8m) back from it, beside a
  one-element stand-in input, while the kernel allocates the input gradient.
"""

from __future__ import annotations

from torch import nn

from ._rule import Flags, Rule, keep, numel
from ._trace import Op, Trace

# what stock autograd keeps for native_batch_norm (input, weight, running stats, saved
# mean and invstd), reused where the lean BatchNorm runs torch's own batch norm
_BN_STOCK_SAVES = keep("i0", "i1", "i3", "i4", "o1", "o2")

# the one-element tensor a channel-sparse conv (odtkit.engine._sparse) expands into a
# shape-only input; a lean conv with a frozen weight needs none (dx by a transposed conv)
STAND_IN_BYTES = 4


def _packed(n: int) -> int:
    return -(-n // 8)


def _lean_conv_saves(op: Op, rg: Flags, t: Trace) -> tuple:
    return ("i0",) if rg[1] else ()


def _lean_linear_saves(op: Op, rg: Flags, t: Trace) -> tuple:
    x, w = (1, 2) if op.name == "addmm" else (0, 1)
    return (f"i{x}",) if rg[w] else ()


def _lean_bn_saves(op: Op, rg: Flags, t: Trace) -> tuple:
    # batch statistics, or a weight that trains, run torch's own batch norm (same saves);
    # running statistics with a frozen weight need nothing of input size
    return _BN_STOCK_SAVES(op, rg, t) if op.args[5] or rg[1] else ()


def _mask_saves(op: Op, rg: Flags, t: Trace) -> tuple:
    return (("new", _packed(numel(t, op.ins[0]))),)


CHUNK, SMALL = 1 << 15, 1 << 13  # odtkit.engine._masks: float test chunks (chunk_of)


def _pack_extra(n: int) -> int:
    """Busiest moment of packing an n-element bool mask, beyond the packed bytes: the mask
    itself (numpy packs it straight into the kept tensor)."""
    return n


def _float_test(n: int) -> int:
    """Building a bool mask from a float test: the mask and one float chunk."""
    chunk = n if n <= SMALL else min(CHUNK, -(-n // 2))
    return n + 4 * chunk


def _sign_fwd(op: Op, rg: Flags, t: Trace) -> int:
    # the sign mask is built before the activation's output exists
    n = numel(t, op.ins[0])
    out = 0 if op.name.endswith("_") else 4 * n
    return max(_float_test(n) - out - _packed(n), _pack_extra(n))


def _mask_bwd(op: Op, rg: Flags, t: Trace) -> int:
    return 0  # the mask is unpacked outside torch's allocator (or not at all: the loop)


def _dropout_saves(op: Op, rg: Flags, t: Trace) -> tuple:
    if op.ins[1] is None or not rg[0]:  # a Python factor, or no gradient to x
        return ()
    return (("new", _packed(numel(t, op.ins[0]))),)


def _dropout_fwd(op: Op, rg: Flags, t: Trace) -> int:
    if op.ins[1] is None or not rg[0]:
        return 0
    # stock's noise dies inside aten::dropout (the trace frees it as that op ends); the
    # lean dropout's ops are top-level, so the noise is still alive while the mask packs
    noise = t.value_storage[op.ins[1]]
    n = numel(t, op.ins[0])
    return _pack_extra(n) + (t.storage_bytes[noise] if noise in t.freed_within else 0)


def _dropout_bwd(op: Op, rg: Flags, t: Trace) -> int:
    return t.value_bytes[op.ins[0]] if op.ins[1] is not None else 0  # the float noise


def _pool_fits(op: Op) -> bool:
    """The lean MaxPool2d's own path: dilation 1, at most 256 positions a window."""
    kernel, dilation = _pair(op.args[1]), _pair(op.args[4] if len(op.args) > 4 else 1)
    return dilation == (1, 1) and kernel[0] * kernel[1] <= 256


def _pair(v: object) -> tuple:
    if isinstance(v, (list, tuple)):
        return tuple(v) * 2 if len(v) == 1 else tuple(v)
    return (v, v)


def _pool_saves(op: Op, rg: Flags, t: Trace) -> tuple:
    return (("new", numel(t, op.outs[0])),)  # uint8 position within the window


def _pool_fwd(op: Op, rg: Flags, t: Trace) -> int:
    # the kept uint8 positions are written while torch's int64 indices live: stock
    # F.max_pool2d runs this op inside aten::max_pool2d (the trace frees unkept indices as
    # that op ends), the lean one at top level, so the indices count here
    idx = t.value_storage[op.outs[1]]
    return t.storage_bytes[idx] if idx in t.freed_within else 0


def _pool_bwd(op: Op, rg: Flags, t: Trace) -> int:
    return 8 * numel(t, op.outs[0]) + STAND_IN_BYTES  # the int64 index and the stand-in


_LEAN_CLAMP = Rule(saves=_mask_saves, grads=("alloc",), bwd_extra=_mask_bwd)
_SIGN_STEP = Rule(saves=_mask_saves, grads=("alloc",), fwd_extra=_sign_fwd,
                  bwd_extra=_mask_bwd)
_DROPOUT = Rule(saves=_dropout_saves, grads=("alloc", "alloc"), fwd_extra=_dropout_fwd,
                bwd_extra=_dropout_bwd)
_MAX_POOL = Rule(saves=_pool_saves, grads=("alloc",), fwd_extra=_pool_fwd, bwd_extra=_pool_bwd,
                 skipped_without_grad=(1,))
LEAN_CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_LEAN_BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
LEAN_BY_OP: dict[str, tuple[tuple[type, ...] | None, Rule]] = {
    "convolution": (LEAN_CONV_TYPES, Rule(saves=_lean_conv_saves,
                                           grads=("alloc", "alloc", "alloc"))),
    "addmm": ((nn.Linear,), Rule(saves=_lean_linear_saves, grads=("alloc", "alloc", "alloc"))),
    "mm": ((nn.Linear,), Rule(saves=_lean_linear_saves, grads=("alloc", "alloc"))),
    "native_batch_norm": (_LEAN_BN_TYPES, Rule(saves=_lean_bn_saves,
                                               grads=("alloc", "alloc", "alloc"),
                                               skipped_without_grad=(1, 2))),
    # functional and module ReLU / ReLU6 / Hardtanh alike
    "relu": (None, _LEAN_CLAMP), "relu_": (None, _LEAN_CLAMP),
    "hardtanh": (None, _LEAN_CLAMP), "hardtanh_": (None, _LEAN_CLAMP),
    # nn.Dropout in train mode: CPU dropout's multiply by the noise (out of place or not)
    "mul": ((nn.Dropout,), _DROPOUT), "mul_": ((nn.Dropout,), _DROPOUT),
    "max_pool2d_with_indices": ((nn.MaxPool2d,), _MAX_POOL),
}
# under activation_grad="mobiletl": modules and functional calls alike
MOBILETL_BY_OP: dict[str, Rule] = {
    name: _SIGN_STEP for name in ("hardswish", "hardswish_", "silu", "silu_", "gelu")}


def lean_rule(op: Op, activation_grad: str = "exact") -> Rule | None:
    """The lean engine's rule for ``op``, or None where the engine runs the stock op."""
    if activation_grad == "mobiletl" and op.name in MOBILETL_BY_OP:
        return MOBILETL_BY_OP[op.name]
    hit = LEAN_BY_OP.get(op.name)
    if hit is None or (hit[0] is not None and op.leaf_type not in hit[0]):
        return None
    if op.name == "max_pool2d_with_indices" and not _pool_fits(op):
        return None
    return hit[1]


# ---------------------------------------------------------------- what limits lean here

_CLAMPS = ("ReLU", "ReLU6", "Hardtanh", "relu", "relu_", "hardtanh", "hardtanh_")
_SMOOTH = ("Hardswish", "SiLU", "GELU", "hardswish", "hardswish_", "silu", "silu_", "gelu")
_PRODUCTS = ("mul", "mul_", "div", "div_", "bmm", "baddbmm", "matmul")
_NORMS = ("LayerNorm", "GroupNorm", "native_layer_norm", "native_group_norm")
_REASONS = {
    "clamp": "1 bit per element, the least an exact clamp backward needs",
    "sign": "MobileTL's 1-bit sign mask (approximate backward)",
    "exact": "the exact backward of a smooth activation needs its whole input (4 bytes an "
             "element); activation_grad='mobiletl' keeps 1 bit at an approximate gradient",
    "dropout": "1 bit per element, which elements were kept",
    "pool": "the argmax's position within its window, 1 byte per output",
    "norm": "a LayerNorm/GroupNorm keeps its input whenever a gradient passes through it, "
            "trainable or not: its input gradient needs the normalized input",
    "attention": "attention keeps query, key, value and output, each needed for the "
                 "others' gradients",
    "rnn": "a recurrent layer keeps its gates and states at every step",
    "weight": "its weight trains: the weight gradient needs the input",
    "bn": "batch statistics or a trainable scale need the input",
    "output": "its backward needs its output (or input); stock PyTorch",
    "embedding": "the token indices, for the embedding's gradient",
    "other": "stock PyTorch: what its derivative formula needs",
}


def _reason(kind: str, trains: bool, parent_trains: bool, activation_grad: str) -> str:
    if kind in _CLAMPS:
        return _REASONS["clamp"]
    if kind in _SMOOTH:
        return _REASONS["sign" if activation_grad == "mobiletl" else "exact"]
    if kind in _PRODUCTS:
        why = "a product of two activations keeps each factor for the other's gradient"
        if parent_trains:  # e.g. squeeze-excitation: x * gate(x), the gate's biases train
            why += ("; here a gating branch (squeeze-excitation) beside it trains, so the "
                    "gated input is kept for that branch's gradient")
        return why
    if kind in _NORMS:
        return _REASONS["norm"] + ("; its scale trains too" if trains else "")
    table = {"Dropout": "dropout", "MaxPool2d": "pool", "MultiheadAttention": "attention",
             "LSTM": "rnn", "GRU": "rnn", "RNN": "rnn", "mkldnn_rnn_layer": "rnn",
             "Embedding": "embedding", "Sigmoid": "output", "Tanh": "output",
             "Hardsigmoid": "output", "Softmax": "output", "sigmoid": "output",
             "hardsigmoid": "output", "_softmax": "output", "tanh": "output"}
    if kind in table:
        return _REASONS[table[kind]]
    if "attention" in kind:
        return _REASONS["attention"]
    if kind.startswith(("Conv", "Linear")) or kind in ("convolution", "addmm", "mm"):
        return _REASONS["weight"]
    if kind.startswith("BatchNorm"):
        return _REASONS["bn"]
    return _REASONS["other"]


def lean_limits(rows: tuple, plan) -> tuple[tuple[str, str, int, str], ...]:
    """Where the lean engine's savings stop: (layer, type, bytes kept, why) for every row
    of a lean report that keeps bytes for backward, most bytes first. ``rows``: a
    MemoryReport's rows; ``plan``: its TrainPlan (trainable names, activation_grad)."""
    trained = [n.rsplit(".", 1)[0] for n in plan.trainable]  # modules with a trained tensor
    out = []
    for r in rows:
        if r.saved_bytes <= 0:
            continue
        parent = r.name.rsplit(".", 1)[0] if "." in r.name else ""
        parent_trains = any(m.startswith(parent + ".") for m in trained) if parent else False
        out.append((r.name, r.type, r.saved_bytes,
                    _reason(r.type, r.trainable, parent_trains, plan.activation_grad)))
    return tuple(sorted(out, key=lambda t: -t[2]))


# kept bytes that are already the least their backward needs, or that the plan asks for
_NOT_LIMITS = frozenset(_REASONS[k] for k in ("clamp", "sign", "dropout", "pool", "weight"))


def lean_notes(rows: tuple, plan, top: int = 3) -> tuple[str, ...]:
    """Report notes on the ``top`` rows of ``lean_limits`` where savings stop short: bytes
    kept beyond a minimal mask or index and beyond what a trained weight asks for."""
    limits = lean_limits(rows, plan)
    total = sum(n for _, _, n, _ in limits) or 1
    stops = [lim for lim in limits if lim[3] not in _NOT_LIMITS]
    return tuple(f"lean stops at {name} ({kind}): {nbytes:,} B kept, {100 * nbytes / total:.0f}% "
                 f"of activations; {why}" for name, kind, nbytes, why in stops[:top])
