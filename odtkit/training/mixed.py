"""How the Loop runs a precision (``odtkit.quant.precision`` describes them).

One ``PrecisionRun`` per Loop: ``autocast()`` wraps forward and loss (and evaluation),
``backward(loss)`` and ``step(optimizer)`` replace ``loss.backward()`` and
``optimizer.step()``. fp32 is the plain path, so its numbers are those of a loop
without it. fp16 keeps a ``torch.amp.GradScaler("cpu")``; int8 re-rounds the Int8Model's
integers after every optimizer step (``Int8Model.round_``, as ``round_after_step_`` does,
with the loop's generator so a resume continues it) and applies ``qas_`` when asked.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn

from ..quant import Int8Model, fp8_autocast, precision_info, qas_

__all__ = ["PrecisionRun", "check_precision_model"]


class PrecisionRun:
    """The forward context, backward and step of ``precision`` for ``model``."""

    def __init__(self, precision: str, model: nn.Module, optimizer: torch.optim.Optimizer, *,
                 qas: bool = False, rounding: str = "nearest", seed: int = 0) -> None:
        self.info = precision_info(precision)
        self.name = self.info.name
        check_precision_model(self.name, model, qas)
        self.scaler = torch.amp.GradScaler("cpu") if self.info.loss_scaler else None
        self.skipped = 0  # optimizer steps a GradScaler skipped, over the whole run
        self.qas = qas_(model) if qas else None
        self.generator: torch.Generator | None = None
        if self.name == "int8":
            self.generator = torch.Generator().manual_seed(seed)
            gen = self.generator

            def reround(opt: torch.optim.Optimizer, args: object, kwargs: object) -> None:
                model.round_(rounding, gen)  # type: ignore[operator]

            optimizer.register_step_post_hook(reround)

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """The context forward and loss run in."""
        if self.info.autocast_dtype is not None:
            return torch.autocast("cpu", dtype=self.info.autocast_dtype)
        if self.info.float8_dtype is not None:
            return fp8_autocast(self.info.float8_dtype)
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        (loss if self.scaler is None else self.scaler.scale(loss)).backward()

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """The optimizer step; with a GradScaler: unscale, skip on inf/NaN, update."""
        if self.scaler is None:
            optimizer.step()
            return
        before = self.scaler.get_scale()
        self.scaler.step(optimizer)
        self.scaler.update()
        if self.scaler.get_scale() < before:  # update() lowers the scale only on inf/NaN
            self.skipped += 1

    @property
    def loss_scale(self) -> float:
        """The GradScaler's current scale (1.0 without one)."""
        return 1.0 if self.scaler is None else float(self.scaler.get_scale())

    def close(self) -> None:
        """Remove what was put on the model (the QAS gradient hooks)."""
        if self.qas is not None:
            self.qas.remove()
            self.qas = None

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps: the scaler's state, skipped steps, rounding RNG."""
        return {"scaler": None if self.scaler is None else self.scaler.state_dict(),
                "skipped": self.skipped,
                "generator": None if self.generator is None else self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.scaler is not None:
            self.scaler.load_state_dict(state["scaler"])
        if self.generator is not None:
            self.generator.set_state(state["generator"])
        self.skipped = int(state["skipped"])


def check_precision_model(precision: str, model: nn.Module, qas: bool = False) -> None:
    """Raise unless ``model`` can train at ``precision`` (an Int8Model for int8, float32
    parameters for the others) and ``qas`` is only asked of int8."""
    if qas and precision != "int8":
        raise ValueError(f"qas=True scales the gradients of an int8 graph, but the precision "
                         f"is {precision!r}; train an Int8Model with precision='int8', or "
                         "pass qas=False")
    if precision == "int8":
        if not isinstance(model, Int8Model):
            raise TypeError(
                f"precision='int8' trains the int8 graph, got a {type(model).__name__}; "
                "convert it first: int8 = odt.quant.to_int8(model, task.x_train[:256]) "
                "(activation ranges from those calibration inputs), then train int8 with "
                "odt.plan(int8, scheme, precision='int8')")
        return
    if isinstance(model, Int8Model) and precision != "fp32":
        raise ValueError(f"an Int8Model trains with precision='int8', got {precision!r}")
    if precision == "fp32":
        return
    dtypes = sorted({str(p.dtype) for p in model.parameters() if p.is_floating_point()})
    if dtypes and dtypes != ["torch.float32"]:
        raise ValueError(f"precision={precision!r} keeps float32 master weights and casts "
                         f"for the arithmetic, but the model's parameters are {dtypes}; pass "
                         "the model in float32 (model.float())")
