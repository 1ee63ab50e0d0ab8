"""Which custom forwards need the lean functional mode: a conservative read of their code.

A custom forward gets the lean functional mode (``_functional.LeanFunctions``) so that a
ReLU/ReLU6/Hardtanh (or, under MobileTL, Hardswish/SiLU/GELU) it calls as a function keeps
a mask. The mode costs a Python round trip on every torch call in that forward, so a lean
model skips it where the forward's own code provably calls none of them:
``needs_mode`` says False only if every name the code loads is one of torch's modules
(torch, torch.nn, torch.nn.functional), math, operator or a plain builtin; every
attribute it reads on ``self`` is a submodule, a tensor, None or a plain number, string or
flag; no attribute it reads elsewhere is named like a routed activation (``F.relu``,
``x.relu()``, ``torch.relu_``...); it has no closure, nested code or import; and no module
below it is one of torch's own composite modules (a TransformerEncoderLayer calls F.relu
from inside torch), Sequential, ModuleList and ModuleDict aside. Anything else - a method
of self, a function kept as an attribute, a helper from another module - keeps the mode.
Submodules with custom forwards decide for themselves; a skipped forward's calls into
them are module calls.
"""

from __future__ import annotations

import builtins
import dis
import math
import operator
import types
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

# functions the lean functional mode routes, by the names they are called with
ROUTED = frozenset({"relu", "relu_", "relu6", "hardtanh", "hardtanh_", "hardswish", "silu",
                    "gelu"})
_MODULES = (torch, torch.nn, F, math, operator)
_BUILTINS = frozenset({"len", "range", "isinstance", "tuple", "list", "dict", "int", "float",
                       "bool", "str", "zip", "enumerate", "min", "max", "sum", "abs", "any",
                       "all", "reversed", "sorted", "print", "ValueError", "RuntimeError",
                       "TypeError"})
_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
_ATTR = frozenset({"LOAD_ATTR", "LOAD_METHOD"})
_FAST = frozenset({"LOAD_FAST", "LOAD_FAST_CHECK", "LOAD_FAST_BORROW"})
_OPAQUE = frozenset({"LOAD_DEREF", "LOAD_CLOSURE", "LOAD_CLASSDEREF", "IMPORT_NAME",
                     "IMPORT_FROM", "IMPORT_STAR", "LOAD_SUPER_ATTR", "LOAD_FROM_DICT_OR_DEREF",
                     "LOAD_FROM_DICT_OR_GLOBALS"})
_PLAIN = (nn.Module, torch.Tensor, bool, int, float, str, type(None))


def _torch_composite(module: nn.Module) -> bool:
    """One of torch's own modules with children that is not a plain container."""
    return (type(module).__module__.startswith("torch.") and bool(module._modules)
            and not isinstance(module, _CONTAINERS))


def _global_ok(name: str, scope: dict) -> bool:
    if name in scope:
        value = scope[name]
        return any(value is m for m in _MODULES)
    return name in _BUILTINS and hasattr(builtins, name)


def _plain_value(value: object) -> bool:
    if isinstance(value, tuple):
        return all(isinstance(v, _PLAIN) for v in value)
    return isinstance(value, _PLAIN)


def _on_self(prev: dis.Instruction | None, self_name: str | None) -> bool:
    if prev is None or self_name is None:
        return False
    if prev.opname in _FAST:
        return prev.argval == self_name
    return prev.opname == "LOAD_FAST_LOAD_FAST" and prev.argval[-1] == self_name


def needs_mode(module: nn.Module, forward: Callable) -> bool:
    """True unless ``forward`` (a function taking ``module`` first) provably calls no
    routed activation itself and no torch composite module sits below ``module``."""
    code = getattr(forward, "__code__", None)
    scope = getattr(forward, "__globals__", None)
    if code is None or scope is None or code.co_freevars or code.co_argcount == 0:
        return True
    if any(isinstance(c, types.CodeType) for c in code.co_consts):
        return True
    if any(_torch_composite(m) for m in module.modules() if m is not module):
        return True
    self_name = code.co_varnames[0]
    prev = None
    for ins in dis.get_instructions(code):
        name = ins.opname
        if name in _OPAQUE:
            return True
        if name in ("LOAD_GLOBAL", "LOAD_NAME") and not _global_ok(ins.argval, scope):
            return True
        if name in _ATTR:
            if _on_self(prev, self_name):
                if not _plain_value(getattr(module, ins.argval, None)):
                    return True
            elif ins.argval in ROUTED:
                return True
        prev = ins
    return False


__all__ = ["ROUTED", "needs_mode"]
