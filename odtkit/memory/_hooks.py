"""Watching a real step without changing it: torch's global module hooks (a module's own
hook dicts stay empty) and the profiler's start/stop banner silenced."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator

import torch
from torch.nn.modules.module import (
    register_module_forward_hook,
    register_module_forward_pre_hook,
)


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
    """Silence the profiler's start/stop banner, which its C++ side writes to fd 2."""
    try:
        saved = os.dup(2)
    except OSError:  # no file descriptor 2 (some embedded interpreters)
        yield
        return
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


@contextlib.contextmanager
def global_calls(model: torch.nn.Module, enter: Callable, leave: Callable) -> Iterator[None]:
    """``enter(name, module)`` and ``leave(name, module, inputs, output)`` around every call
    of a module of ``model``, through torch's global module hooks: a module's own hook
    dicts stay empty, so PyTorch's fused inference path (``nn.TransformerEncoderLayer``
    in eval mode, which per-module hooks switch off) runs as in an unobserved step."""
    names = {id(m): name for name, m in model.named_modules()}

    def pre(module: torch.nn.Module, inputs: tuple) -> None:
        name = names.get(id(module))
        if name is not None:
            enter(name, module)

    def post(module: torch.nn.Module, inputs: tuple, output: object) -> None:
        name = names.get(id(module))
        if name is not None:
            leave(name, module, inputs, output)

    handles = [register_module_forward_pre_hook(pre),
               register_module_forward_hook(post, always_call=True)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()
