"""Dense baselines: send fp32 as is, or cast to a 16-bit float."""

from __future__ import annotations

import torch

from .base import Compressor, Ctx, require_finite
from .wire import Payload


class NoCompression(Compressor):
    """The dense baseline: the tensor travels unchanged (a copy, in its own dtype)."""

    kind = "none"
    unbiased = True
    keep_dtype = True
    summable = True  # fp32 payloads add up entry by entry

    def _encode(self, x: torch.Tensor, name: str, step: int) -> tuple[Payload, dict]:
        return (x.reshape(-1).clone(),), {}

    def _decode(self, payload: Payload, ctx: Ctx) -> torch.Tensor:
        return payload[0]


class _Cast(Compressor):
    """Cast, then one sum over the (half-size) result: inf or NaN there means a non-finite
    input or a value the cast rounded to inf; only then is the input scanned."""

    target: torch.dtype = torch.float16
    summable = True  # the receiver sums 16-bit payloads (in fp32, as PyTorch's fp16 hook)
    folds_finite_check = True

    def _encode(self, x: torch.Tensor, name: str, step: int) -> tuple[Payload, dict]:
        half = x.reshape(-1).to(self.target)
        if not require_finite(half.sum(), x, name) and bool(half.isinf().any()):
            top = torch.finfo(self.target).max
            peak = float(x.abs().max())
            other = "use 'bf16'" if self.target == torch.float16 else "send it as 'none'"
            raise ValueError(
                f"tensor {name!r} has |value| {peak:.4g} above the {self.kind} maximum {top:.4g}: "
                f"the cast would give inf. Scale the gradient down or {other}"
            )
        return (half,), {}

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
