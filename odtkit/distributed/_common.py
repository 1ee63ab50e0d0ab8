"""What every data-parallel path shares: per-worker compressors, the average, dense bytes."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn


def make_compressor(compressor: str | Callable[[], Any], *, error_feedback: bool = False,
                    seed: int = 0, **kwargs: Any) -> Any:
    """A fresh compressor (one per worker): by name via ``odt.compress.get`` or a factory.

    ``error_feedback=True`` wraps it in ``ErrorFeedback`` (per-worker residuals).
    A ready compressor object is refused: workers must not share residuals or state.
    """
    from .. import compress

    if isinstance(compressor, str):
        comp = compress.get(compressor, seed=seed, **kwargs)
    elif callable(compressor) and not hasattr(compressor, "compress"):
        if kwargs:
            raise ValueError(f"compressor keywords {sorted(kwargs)} only apply to a name; "
                             "put them in your factory")
        comp = compressor()
    else:
        raise TypeError(
            f"compressor must be a name such as 'topk' or a zero-argument factory, got "
            f"{type(compressor).__name__}: every worker needs its own instance "
            "(own residual and state), e.g. lambda: odt.compress.get('topk', density=0.01)")
    return compress.ErrorFeedback(comp) if error_feedback else comp


def check_compressor_vs_optimizer(comp: Any, optimizer: str) -> None:
    inner = getattr(comp, "inner", comp)
    if getattr(inner, "momentum_correction", False) and optimizer != "sgd":
        raise ValueError(
            f"{inner.kind!r} applies momentum itself (momentum correction), so the optimizer "
            f"must be plain 'sgd', got optimizer={optimizer!r}; or pass "
            "momentum_correction=False")


def dgc_workers(compressor: Any, kwargs: dict[str, Any], workers: int) -> dict[str, Any]:
    """``kwargs`` with DGC's ``num_workers`` (its local clipping bound) defaulted to ``workers``."""
    if compressor == "dgc":
        return {"num_workers": workers, **kwargs}
    return kwargs


def set_epoch(comp: Any, epoch: float) -> None:
    """Drive warm-up schedules (DGC) where the compressor has one."""
    setter = getattr(comp, "set_epoch", None)
    if callable(setter):
        setter(epoch)


def average(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Mean in the given (rank) order: the simulation and the DDP hook share it bit for bit."""
    total = tensors[0].detach().clone().float()
    for t in tensors[1:]:
        total += t
    return total / len(tensors)


def dense_bytes(model: nn.Module) -> int:
    """Bytes of one fp32 gradient of the trainable parameters."""
    return sum(4 * p.numel() for p in model.parameters() if p.requires_grad)


def renamed_attribute(obj: object, name: str,
                      renamed: Mapping[str, tuple[str, Callable[[Any], Any]]]) -> Any:
    """For a history's ``__getattr__``: an old attribute name still answers (its old value,
    ``convert(new attribute)``) with a DeprecationWarning naming the new one."""
    if name not in renamed:
        raise AttributeError(f"{type(obj).__name__!r} object has no attribute {name!r}")
    new, convert = renamed[name]
    warnings.warn(f"{type(obj).__name__}.{name} is now {new}", DeprecationWarning, stacklevel=3)
    return convert(getattr(obj, new))
