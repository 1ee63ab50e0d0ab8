"""Dense baselines: send fp32 as is, or cast to a 16-bit float."""

from __future__ import annotations

import torch

from .base import Compressor, Ctx
from .wire import Payload


class NoCompression(Compressor):
    """The dense baseline: the tensor travels unchanged (a copy, in its own dtype)."""

    kind = "none"
    unbiased = True
    keep_dtype = True

    def _encode(self, x: torch.Tensor, name: str, step: int) -> tuple[Payload, dict]:
        return (x.reshape(-1).clone(),), {}

    def _decode(self, payload: Payload, ctx: Ctx) -> torch.Tensor:
        return payload[0]


class _Cast(Compressor):
    target: torch.dtype = torch.float16

    def _encode(self, x: torch.Tensor, name: str, step: int) -> tuple[Payload, dict]:
        top = torch.finfo(self.target).max
        peak = float(x.abs().max())
        if peak > top:
            other = "use 'bf16'" if self.target == torch.float16 else "send it as 'none'"
            raise ValueError(
                f"tensor {name!r} has |value| {peak:.4g} above the {self.kind} maximum {top:.4g}: "
                f"the cast would give inf. Scale the gradient down or {other}"
            )
        return (x.reshape(-1).to(self.target),), {}

    def _decode(self, payload: Payload, ctx: Ctx) -> torch.Tensor:
        return payload[0].float()


class FP16(_Cast):
    """IEEE half precision: 2 bytes per entry, round to nearest; tiny values flush to 0."""

    kind = "fp16"
    target = torch.float16


class BF16(_Cast):
    """bfloat16: fp32's range with 8 significant bits, 2 bytes per entry."""

    kind = "bf16"
    target = torch.bfloat16
