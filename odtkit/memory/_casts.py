"""What casting steps change in the step model: the fp8 casts of ``fp8_autocast`` (which
parameters' gradients arrive through a cast) and ``torch.autocast``'s weight cache (which
cast copies live until autocast exits, after the loss)."""

from __future__ import annotations

import torch

from ._rules import FP8_CAST_TYPES
from ._trace import Trace, where


def elements(t: Trace, v: int) -> int:
    n = 1
    for d in t.value_shape[v]:
        n *= d
    return n


def gradient_bytes(t: Trace, param_grad: dict[int, int], fp8: bool) -> int:
    """Bytes of the parameters' gradients: their own size, 1 byte per element under fp8
    for a parameter read only as a conv/linear weight (its gradient arrives through the
    cast)."""
    cast = fp8_cast_params(t) if fp8 else set()
    return sum(elements(t, v) if v in cast else t.value_bytes[v] for v in param_grad)


def fp8_cast_params(t: Trace) -> set[int]:
    """Parameter values read only as the weight of an nn.Conv*/nn.Linear call (directly by
    the convolution, or through the transpose a linear makes of it): under fp8_autocast
    all their gradient arrives through a cast."""
    params = set(t.param_value.values())
    cast, other = set(), set()
    for op in t.ops[:t.n_forward]:
        for pos, v in enumerate(op.ins):
            for u in v if isinstance(v, tuple) else (v,):
                if u not in params:
                    continue
                conv = op.name == "convolution" and pos == 1
                linear = op.name == "t" and pos == 0
                kinds = FP8_CAST_TYPES["convolution" if conv else "addmm"]
                ((cast if (conv or linear) and op.leaf_type in kinds else other).add(u))
    return cast - other


def cached_casts(t: Trace, trains: set[int], params: dict[int, str]) -> set[int]:
    """Storages autocast's weight cache holds from the cast until autocast exits after
    the loss: the cast to the autocast dtype of each float32 parameter that trains (a
    leaf that needs a gradient). A second cast of it would be served from the cache,
    which the trace (made without the cache) cannot replay: refused."""
    first: dict[int, int] = {}
    if t.autocast is None:
        return set()
    for op in t.ops:
        v = op.ins[0] if op.name == "_to_copy" and op.ins else None
        if (v not in trains or t.value_dtype[v] != torch.float32
                or t.value_dtype[op.outs[0]] != t.autocast):
            continue
        if v in first:
            raise ValueError(
                f"odt.estimate cannot model parameter {params[v]!r} cast twice under "
                f"autocast ({where(op.module, op.leaf_type)} reads it again): autocast "
                "hands the second read its cached copy; use odt.measure for this model, "
                "or estimate with an 'fp32' plan")
        first[v] = t.value_storage[op.outs[0]]
    return set(first.values())
