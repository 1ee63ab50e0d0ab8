"""Dense baselines: send the tensor as is (a copy), or cast it to a 16-bit float.

In bare PyTorch a round trip of these is one copy, or one cast and one cast back, so
every extra pass and every per-call Python step shows. The NaN/inf refusal therefore
rides on one sum of the payload (inf or NaN whenever an entry is, or the cast rounded a
value to inf; for a 16-bit payload it reads half the input's bytes), and a float32 tensor
that needs no grad takes a short path through ``compress``: checks that read no data, the
payload, its sum, the step and the context, nothing else. Any other input goes through
``Compressor.compress`` and the same ``_encode``. Only a sum that is not finite leads to
``_settle``, which tells an overflowed sum from a bad entry or an overflowed cast.
"""

from __future__ import annotations

import math
from operator import methodcaller

import torch

from .base import HALF_DTYPES, Compressor, Ctx, make_ctx, require_finite
from .wire import Payload

_Tensor = torch.Tensor
_FP32 = torch.float32
_isfinite = math.isfinite


class _Dense(Compressor):
    """Shared by the copy and the casts: ``_payload`` (flat tensor -> the wire tensor) and
    the refusal of a payload that holds NaN or inf."""

    summable = True  # payloads add up entry by entry (16-bit ones summed in fp32, as
    # PyTorch's fp16 hook does)
    folds_finite_check = True  # on the payload's sum

    # input dtypes the short path takes (any other input: Compressor.compress)
    short_dtypes: frozenset[torch.dtype] = frozenset({_FP32})

    # flat tensor -> the wire tensor, called without a Python frame (methodcaller)
    _payload: methodcaller

    def compress(self, tensor: torch.Tensor, name: str) -> tuple[Payload, Ctx]:
        # the short path's checks read no data: a plain tensor, of a dtype it takes,
        # needing no grad (detach), not empty
        if (tensor.__class__ is not _Tensor or tensor.dtype not in self.short_dtypes
                or tensor.requires_grad or not tensor.numel()):
            return Compressor.compress(self, tensor, name)
        sent = self._payload(tensor.ravel())  # ravel: a view of a contiguous tensor
        total = sent.sum().item()
        if not _isfinite(total):
            self._settle(total, sent, tensor, name)
        steps = self._steps
        step = steps.get(name, 0)
        steps[name] = step + 1
        return (sent,), make_ctx(name, tuple(tensor.shape), tensor.dtype, step, {})

    def _encode(self, x: torch.Tensor, name: str, step: int) -> tuple[Payload, dict]:
        sent = self._payload(x.ravel())
        total = sent.sum().item()
        if not _isfinite(total):
            self._settle(total, sent, x, name)
        return (sent,), {}

    def _settle(self, total: float, sent: torch.Tensor, x: torch.Tensor, name: str) -> None:
        """The payload's sum ``total`` is inf or NaN. Return if every entry is finite (only the sum
        overflowed: a 16-bit sum above 65504, say); else raise naming the first non-finite
        entry of ``x`` or, where ``x`` is finite, the value the cast rounded to inf."""
        if sent.dtype in HALF_DTYPES and _isfinite(sent.sum(dtype=torch.float32).item()):
            return  # no inf or NaN survives a float32 sum of 16-bit values
        require_finite(total, x, name)  # not finite, so x is scanned: raises on a bad entry
        if bool(sent.isinf().any()):
            top = torch.finfo(sent.dtype).max
            peak = float(x.abs().max())
            other = "use 'bf16'" if sent.dtype == torch.float16 else "send it as 'none'"
            raise ValueError(
                f"tensor {name!r} has |value| {peak:.4g} above the {self.kind} maximum {top:.4g}: "
                f"the cast would give inf. Scale the gradient down or {other}"
            )


class NoCompression(_Dense):
    """The dense baseline: the tensor travels unchanged (a copy, in its own dtype)."""

    kind = "none"
    unbiased = True
    keep_dtype = True

    # the payload keeps the tensor's dtype, so it always decodes
    short_dtypes = frozenset({_FP32, torch.float64, *HALF_DTYPES})

    _payload = methodcaller("clone")

    def decompress(self, payload: Payload, ctx: Ctx) -> torch.Tensor:
        # flat on the wire; sizes passed one by one, which PyTorch parses faster than a tuple
        shape = ctx.shape
        out = payload[0].reshape(*shape) if shape else payload[0].reshape(())
        return out if out.dtype is ctx.dtype else out.to(ctx.dtype)


class _Cast(_Dense):
    """Cast to ``target`` (each subclass sets it and its ``_payload``, the cast to it); the
    receiver casts back to float32 (then the caller's dtype)."""

    target: torch.dtype

    def decompress(self, payload: Payload, ctx: Ctx) -> torch.Tensor:
        shape = ctx.shape  # flat on the wire, as NoCompression.decompress
        out = payload[0].float().reshape(*shape) if shape else payload[0].float().reshape(())
        return out if ctx.dtype is _FP32 else out.to(ctx.dtype)


class FP16(_Cast):
    """IEEE half precision: 2 bytes per entry, round to nearest; tiny values flush to 0."""

    kind = "fp16"
    target = torch.float16
    _payload = methodcaller("to", target)


class BF16(_Cast):
    """bfloat16: fp32's range with 8 significant bits, 2 bytes per entry."""

    kind = "bf16"
    target = torch.bfloat16
    _payload = methodcaller("to", target)
