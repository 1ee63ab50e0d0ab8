"""How a measured step runs per precision, and a loss scale under which it really updates."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["StepSetup", "labels_for", "loss_scale_that_steps", "storage_key"]


def storage_key(t: torch.Tensor) -> int:
    """Identity of the memory a tensor lives in (unique while that memory is alive)."""
    return t.untyped_storage()._cdata


@dataclass(frozen=True)
class StepSetup:
    """How the step runs and counts, per precision.

    ``autocast``: the dtype of ``torch.autocast("cpu", ...)`` around forward and loss;
    ``fp8``: the float8 dtype of ``fp8_autocast`` around forward (the tensors saved from its
    casts count as kind "fp8", the gradients of parameters that arrive only through its
    casts as kind "fp8-grad");
    ``grad_scaler``: a ``torch.amp.GradScaler("cpu")`` scales the loss and steps (its scale
    and growth tracker count as optimizer state); ``after_step``: called with the model
    after the optimizer step (the int8 graph re-rounds); ``element_bytes(kind, tensor)``:
    bytes per element that a device keeps for a tensor of ``kind`` ("param", "buffer",
    "grad", "fp8-grad", "state", "saved", "weight-copy", "fp8"), or None for the tensor's own element size.
    """

    autocast: torch.dtype | None = None
    fp8: torch.dtype | None = None
    grad_scaler: bool = False
    after_step: Callable[[torch.nn.Module], None] | None = None
    element_bytes: Callable[[str, torch.Tensor], int | None] | None = None

    def nbytes(self, kind: str, t: torch.Tensor) -> int:
        """Bytes of the storage behind ``t`` as a tensor of ``kind`` is kept."""
        real = t.untyped_storage().nbytes()
        per = None if self.element_bytes is None else self.element_bytes(kind, t)
        return real if per is None else real // t.element_size() * per

    def total(self, kind: str, tensors: Iterable[torch.Tensor]) -> int:
        """``nbytes`` of the distinct storages behind ``tensors`` (views counted once)."""
        seen = {storage_key(t): t for t in tensors}
        return sum(self.nbytes(kind, t) for t in seen.values())


def labels_for(logits: torch.Tensor) -> torch.Tensor:
    return torch.arange(logits.shape[0]) % logits.shape[1]


def loss_scale_that_steps(model: torch.nn.Module, x: torch.Tensor, dtype: torch.dtype) -> float:
    """The largest GradScaler scale (65536 halved as often as needed) whose scaled gradients
    stay finite on this step, found on a copy: the measured step then really updates and
    creates its optimizer state, where a skipped first step would keep none."""
    probe = copy.deepcopy(model)
    scale = 65536.0
    for _ in range(40):
        probe.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=dtype):
            logits = probe(x)
            loss = F.cross_entropy(logits, labels_for(logits))
        (loss.float() * scale).backward()
        if all(p.grad is None or bool(p.grad.isfinite().all()) for p in probe.parameters()):
            return scale
        scale /= 2
    raise FloatingPointError("the loss gradient is not finite even unscaled: check the model "
                             "and the example input for NaN or inf")
