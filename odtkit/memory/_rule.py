"""The shape of a memory rule, shared by the stock rules (``_rules``) and the lean
engine's rules (``_rules_lean``): see ``_rules`` for what a rule answers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ._trace import Op, Trace

Flags = tuple[bool, ...]  # requires-grad per positional argument


@dataclass(frozen=True)
class Rule:
    """How one kind of op behaves under autograd (see ``_rules``' docstring)."""

    saves: Callable[[Op, Flags, Trace], tuple] = lambda op, rg, t: ()
    grads: tuple[str, ...] = ()  # per positional argument: "alloc", "alias", "reduce", ""
    fwd_extra: Callable[[Op, Flags, Trace], int] = lambda op, rg, t: 0
    bwd_extra: Callable[[Op, Flags, Trace], int] = lambda op, rg, t: 0
    # scratch a kernel allocates and frees inside itself beyond the extras above: counted
    # in the allocator peak only (stock kernels' scratch is probed instead, ``_scratch``)
    fwd_scratch: Callable[[Op, Flags, Trace], int] = lambda op, rg, t: 0
    bwd_scratch: Callable[[Op, Flags, Trace], int] = lambda op, rg, t: 0
    differentiable: bool = True
    skipped_without_grad: tuple[int, ...] = ()  # outputs the CPU kernel omits without a graph


def keep(*items: str) -> Callable[[Op, Flags, Trace], tuple]:
    """A ``saves`` that keeps the named arguments/outputs ("i0", "o1", ...) whatever trains."""
    return lambda op, rg, t: items


def numel(t: Trace, v: int) -> int:
    """Elements of traced value ``v``."""
    n = 1
    for d in t.value_shape[v]:
        n *= d
    return n
