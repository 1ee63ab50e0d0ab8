"""What the model's code holds and calls during a trace: CPU-device shells of the meta
tensors (so autocast acts on them), and the top-level ops a real step's profiler sees.

``torch.autocast("cpu")`` casts only tensors whose device is the CPU: on plain meta
tensors it would cast the model's weights but not its activations, and the trace would
see a step no real one runs. A shell claims the CPU device and holds no data; the trace's
dispatch mode unwraps it to the meta tensor it stands for, runs the op there and wraps
the outputs again. Autocast sits above the dispatch mode, so the trace sees exactly the
casts (``_to_copy``) and the ops in the dtypes a real autocast step on the CPU runs.

A measured step reads its live bytes at the end of every top-level aten op (``linear``,
``conv2d``, ``cross_entropy_loss``): what such an op allocates and frees inside itself, as
autocast's copy of a frozen weight, is not a tensor of the step. The dispatch mode sees
only the ops those decompose into (``_to_copy``, ``t``, ``addmm``); ``TopLevelCalls``
watches the torch calls of the model's code, one level up, and tells the trace where
each top-level op ends and what it freed inside itself.
"""

from __future__ import annotations

import contextlib
import inspect
import sys

import torch
from torch.overrides import TorchFunctionMode

__all__ = ["Shell", "TopLevelCalls", "autocast_region", "restride", "unwrap", "wrap_outputs"]


class Shell(torch.Tensor):
    """A data-less CPU tensor standing for the meta tensor ``elem`` (same shape, strides
    and dtype). Only the trace's dispatch mode may run ops on it."""

    elem: torch.Tensor
    __torch_function__ = torch._C._disabled_torch_function_impl

    @staticmethod
    def __new__(cls, elem: torch.Tensor) -> Shell:
        shell = torch.Tensor._make_wrapper_subclass(
            cls, elem.shape, strides=elem.stride(), storage_offset=elem.storage_offset(),
            dtype=elem.dtype, device="cpu", requires_grad=False)
        shell.elem = elem
        return shell

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        raise RuntimeError(f"{func} ran on a memory-trace tensor outside the trace; it holds "
                           "no data (a meta tensor on the CPU device)")


def unwrap(t: torch.Tensor) -> torch.Tensor:
    """The meta tensor behind a shell; any other tensor as it is."""
    return t.elem if isinstance(t, Shell) else t


def restride(shell: torch.Tensor, meta: torch.Tensor) -> None:
    """Give ``shell`` the shape and strides an in-place view op (``transpose_``) gave the
    meta tensor it stands for: code that called the op holds the shell, not the result."""
    if isinstance(shell, Shell):
        with torch._C._DisableTorchDispatch():
            torch.ops.aten.as_strided_.default(shell, meta.shape, meta.stride(),
                                               meta.storage_offset())


def wrap_outputs(out: object, margs: tuple, args: tuple) -> object:
    """An op's meta outputs as shells; an output that is one of its (meta) arguments, as an
    in-place op returns, comes back as the argument the caller passed."""
    def wrap(o: object) -> object:
        if not isinstance(o, torch.Tensor):
            return o
        for m, a in zip(margs, args, strict=True):
            if m is o:
                return a
        return Shell(o)

    if isinstance(out, (tuple, list)):
        return type(out)(wrap(o) for o in out)
    return wrap(out)


def autocast_region(dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """``torch.autocast("cpu", dtype)`` as the real step runs it, but without its weight
    cache: every cast shows up in the trace, and the step model decides which copy the
    cache keeps (a trace does not know which parameters will train). None: no autocast."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast("cpu", dtype=dtype, cache_enabled=False)


class TopLevelCalls(TorchFunctionMode):
    """Tells ``tracer`` (``in_call``, ``end_call(first_op)``) when the outermost torch call
    of the model's code runs and ends. A builtin call (``F.linear``, ``Tensor.add_``) is one
    top-level aten op. A function written in Python (``F.batch_norm``,
    ``F.multi_head_attention_forward``) is no aten op of its own: the profiler of a real
    step sees each builtin call inside it as a top-level op, and so does the trace. Torch
    runs a Python function's body with this mode off, so the builtin calls in there are
    found with ``sys.setprofile`` (its "c_call" and "c_return" events)."""

    def __init__(self, tracer: object) -> None:
        super().__init__()
        self.tracer = tracer

    def __torch_function__(self, func, types_, args=(), kwargs=None):
        tracer = self.tracer
        if tracer.in_call:  # not reached: the mode is off inside its own handler
            return func(*args, **(kwargs or {}))
        if inspect.isfunction(func) or inspect.ismethod(func):
            return self._python(func, args, kwargs or {})
        first = len(tracer.ops)
        tracer.in_call = True
        try:
            out = func(*args, **(kwargs or {}))
        finally:
            tracer.in_call = False
        if len(tracer.ops) > first:
            tracer.end_call(first)
        return out

    def _python(self, func, args: tuple, kwargs: dict) -> object:
        """Run a Python function, each builtin call in its body one top-level op."""
        tracer = self.tracer
        depth, first = 0, 0

        def hook(frame, event: str, arg: object) -> None:
            nonlocal depth, first
            if event == "c_call":
                if depth == 0:
                    first, tracer.in_call = len(tracer.ops), True
                depth += 1
            elif event in ("c_return", "c_exception") and depth:
                depth -= 1
                if depth == 0:
                    tracer.in_call = False
                    if len(tracer.ops) > first:
                        tracer.end_call(first)

        outer = sys.getprofile()
        sys.setprofile(hook)
        try:
            return func(*args, **kwargs)
        finally:
            sys.setprofile(outer)
            tracer.in_call = False
