"""Functional activations in a model's own forward, routed to the lean engine's ops.

A TorchFunctionMode sees every torch call made while a lean model's custom forward runs;
ReLU/ReLU6/Hardtanh calls (F.relu, torch.relu, Tensor.relu, F.relu6, F.hardtanh and
their in-place forms) keep a bit mask, and under MobileTL (``activation_grad="mobiletl"``)
F.hardswish, F.silu and F.gelu keep a 1-bit sign mask. Everything else passes through.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from .._checks import check_choice
from ..plans import ACTIVATION_GRADS
from ._layers import clamp, sign_step, wants_graph


# parsers named and ordered like torch's own arguments -> (x, lo, hi, inplace)
def _relu(input: Any, inplace: bool = False) -> tuple:
    return input, 0.0, None, inplace


def _relu_(input: Any) -> tuple:
    return input, 0.0, None, True


def _relu6(input: Any, inplace: bool = False) -> tuple:
    return input, 0.0, 6.0, inplace


def _hardtanh(input: Any, min_val: float = -1.0, max_val: float = 1.0,
              inplace: bool = False) -> tuple:
    if min_val > max_val:
        raise ValueError(f"min_val cannot be greater than max_val, got min_val={min_val!r}, "
                         f"max_val={max_val!r}; swap them")
    return input, float(min_val), float(max_val), inplace


def _hardtanh_(input: Any, min_val: float = -1.0, max_val: float = 1.0) -> tuple:
    return _hardtanh(input, min_val, max_val, True)


_CLAMPS = {
    F.relu: _relu, torch.relu: _relu, torch.Tensor.relu: _relu,
    torch.relu_: _relu_, torch.Tensor.relu_: _relu_,
    F.relu6: _relu6, F.hardtanh: _hardtanh, F.hardtanh_: _hardtanh_,
}


# parsers -> (x, kind, inplace, approximate)
def _hardswish(input: Any, inplace: bool = False) -> tuple:
    return input, "hardswish", inplace, "none"


def _silu(input: Any, inplace: bool = False) -> tuple:
    return input, "silu", inplace, "none"


def _gelu(input: Any, approximate: str = "none") -> tuple:
    return input, "gelu", False, approximate


_SMOOTH = {F.hardswish: _hardswish, F.silu: _silu, F.gelu: _gelu}
_PLAIN = (torch.Tensor, nn.Parameter)  # subclasses keep their own op


class LeanFunctions(TorchFunctionMode):
    """Routes functional activations to the lean ops (smooth ones only under MobileTL)."""

    def __init__(self, mobiletl: bool = False) -> None:
        super().__init__()
        self.mobiletl = mobiletl

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        route = _CLAMPS.get(func)
        if route is not None:
            x, lo, hi, inplace = route(*args, **kwargs)
            if type(x) in _PLAIN:
                return clamp(x, lo, hi, inplace)
        elif self.mobiletl:
            route = _SMOOTH.get(func)
            if route is not None:
                x, kind, inplace, approximate = route(*args, **kwargs)
                if type(x) in _PLAIN and x.is_floating_point() and wants_graph(x):
                    return sign_step(x, kind, inplace, approximate)
        return func(*args, **kwargs)


def functions_active() -> bool:
    """True if a LeanFunctions mode is on this thread's stack (then none is pushed again)."""
    stack_of = getattr(torch.overrides, "_get_current_function_mode_stack", None)
    return stack_of is not None and any(isinstance(m, LeanFunctions) for m in stack_of())


class lean_functions:  # used like a function: `with lean_functions(): ...`
    """Context manager: functional ReLU/ReLU6/Hardtanh calls inside save bit masks;
    ``activation_grad="mobiletl"``: F.hardswish/F.silu/F.gelu save MobileTL's sign mask."""

    def __init__(self, activation_grad: str = "exact") -> None:
        self.mobiletl = check_choice("activation_grad", activation_grad,
                                     ACTIVATION_GRADS) == "mobiletl"

    def __enter__(self) -> lean_functions:
        self._mode = None if functions_active() else LeanFunctions(self.mobiletl)
        if self._mode is not None:
            self._mode.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._mode is not None:
            self._mode.__exit__(*exc)
