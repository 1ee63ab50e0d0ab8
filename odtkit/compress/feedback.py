"""Error feedback (Seide et al. 2014; Karimireddy et al., ICML 2019) around any compressor."""

from __future__ import annotations

import math
from typing import Any

import torch

from .base import FP32_MAX, Compressor, Ctx, as_fp32, check_decodable, check_tensor
from .quantize import SignSGD
from .wire import Payload


class ErrorFeedback(Compressor):
    """Compress g + residual and keep what the compression lost for the next step.

    Per name: p = g + e; send C(p); e <- p - D(C(p)). What was sent plus the new
    residual equals the gradient plus the old residual (mass is conserved).
    State: one fp32 residual per tensor name, shaped like the tensor.
    """

    feedback_builtin = True
    needs_error_feedback = False

    def __init__(self, compressor: Compressor) -> None:
        if not isinstance(compressor, Compressor):
            raise TypeError(f"ErrorFeedback wraps a Compressor, got {type(compressor).__name__}")
        if compressor.feedback_builtin:
            raise ValueError(
                f"{compressor!r} already keeps its own residual or accumulator; "
                "wrapping it in ErrorFeedback would count the error twice"
            )
        super().__init__(seed=compressor.seed)
        self.inner = compressor
        self.kind = f"ef({compressor.kind})"
        self.stochastic = compressor.stochastic
        self.fixed_size = compressor.fixed_size
        self._residuals: dict[str, torch.Tensor] = {}

    @property
    def unbiased(self) -> bool:  # the sent tensor is biased; the sum over steps is not
        return False

    def config(self) -> dict[str, Any]:
        return {"compressor": self.inner}

    def compress(self, tensor: torch.Tensor, name: str) -> tuple[Payload, Ctx]:
        p = self.add_residual(tensor, name)
        payload, ctx = self.inner.compress(p, name)
        ctx = Ctx(name=name, shape=tuple(tensor.shape), dtype=tensor.dtype, step=ctx.step,
                  meta=ctx.meta)
        check_decodable(self, payload, ctx)
        self.keep_residual(name, p, self.inner.decompress(payload, _as_fp32(ctx)))
        return payload, ctx

    def add_residual(self, tensor: torch.Tensor, name: str) -> torch.Tensor:
        """p = g + e: the gradient plus what earlier steps did not send (fp32, checked)."""
        check_tensor(tensor, name)
        old = self._residuals.get(name)
        if old is not None and old.shape != tensor.shape:
            raise ValueError(
                f"tensor {name!r} changed shape from {tuple(old.shape)} to {tuple(tensor.shape)}; "
                "call reset() between models or use distinct names"
            )
        p = as_fp32(tensor.detach(), name)
        if old is not None:
            p = p + old
            if not math.isfinite(float(p.sum())) and not bool(p.isfinite().all()):
                raise ValueError(
                    f"gradient plus error-feedback residual of {name!r} overflowed float32 "
                    f"(|value| above {FP32_MAX:.4g}); scale or clip the gradients down or "
                    "call reset()")
        return p

    def keep_residual(self, name: str, p: torch.Tensor, sent: torch.Tensor) -> None:
        """e <- p - sent, where ``sent`` is what this step delivered for ``name``: this
        worker's decoded payload, or the approximation all workers share after an
        all-reduce (PowerSGD's P Q^T, as in the paper). Advances the step of ``name``."""
        self._residuals[name] = p - sent.reshape(p.shape).float()
        self._steps[name] = self._steps.get(name, 0) + 1

    def decompress(self, payload: Payload, ctx: Ctx) -> torch.Tensor:
        return self.inner.decompress(payload, _as_fp32(ctx)).to(ctx.dtype)

    def nbytes(self, payload: Payload) -> int:
        return self.inner.nbytes(payload)

    def residual(self, name: str) -> torch.Tensor:
        """The error not yet sent for ``name`` (fp32); KeyError naming known names if none."""
        if name not in self._residuals:
            raise KeyError(f"no residual for {name!r}; known: {sorted(self._residuals)}")
        return self._residuals[name]

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "inner": self.inner.state_dict(),
                "residuals": {k: v.clone() for k, v in self._residuals.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.inner.load_state_dict(state["inner"])
        self._residuals = {k: v.clone().float() for k, v in state["residuals"].items()}

    def reset(self) -> None:
        super().reset()
        self.inner.reset()
        self._residuals = {}


def _as_fp32(ctx: Ctx) -> Ctx:
    return Ctx(name=ctx.name, shape=ctx.shape, dtype=torch.float32, step=ctx.step, meta=ctx.meta)


class EFSignSGD(ErrorFeedback):
    """EF-signSGD (Karimireddy et al., ICML 2019): scaled sign with error feedback composed.

    Sends ||p||_1 / d * sign(p) with p = g + e (one fp32 scale + 1 bit per entry),
    i.e. ErrorFeedback(SignSGD(scale="mean")). The paper adds the learning rate
    inside p; with a constant rate, keeping the residual in gradient units is the same.
    """

    def __init__(self, *, seed: int = 0) -> None:
        super().__init__(SignSGD(scale="mean", seed=seed))
        self.kind = "ef-signsgd"

    def config(self) -> dict[str, Any]:
        return {"seed": self.seed}
