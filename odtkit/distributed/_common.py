"""What every data-parallel path shares: per-worker compressors, the exchange each one
uses (all-reduce where payloads sum, all-gather elsewhere), the averages, and bytes on
the wire."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from .._checks import normalize_name


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


EXCHANGES = ("allgather", "allreduce", "powersgd")
# summable by construction: the dense casts, and a random-k without a shared_seed option
# once every worker draws positions from the same seed (worker_settings below)
_SUMMABLE_KINDS = ("none", "fp16", "bf16", "randomk")


def exchange_of(comp: Any) -> str:
    """How workers exchange ``comp``'s payloads: 'powersgd' (the paper's two all-reduces of
    P and Q), 'allreduce' (payloads summed entry by entry, then decoded: the dense casts,
    random-k with a shared seed) or 'allgather' (everything else: top-k, threshold, DGC,
    QSGD, TernGrad, sign; a sum of such payloads is not such a payload)."""
    inner = getattr(comp, "inner", comp)
    kind = getattr(inner, "kind", None)
    if kind == "powersgd" and callable(getattr(inner, "project", None)):
        return "powersgd"
    summable = getattr(inner, "summable", False) is True or kind in _SUMMABLE_KINDS
    if kind == "randomk" and hasattr(inner, "shared_seed"):  # positions from a shared seed?
        summable = inner.shared_seed is not None
    if summable:
        return "allreduce"
    return "allgather"


def worker_settings(compressor: str | Callable[[], Any], seed: int, worker: int,
                    kwargs: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """(seed, compressor keywords) of ``worker``. Where payloads are all-reduced every worker
    gets ``seed`` (one PowerSGD warm start; random-k draws its positions from
    ``shared_seed=seed`` where it has that option, from the shared ``seed`` where not), so
    the workers' payloads line up; elsewhere worker w gets ``seed + w``."""
    if not isinstance(compressor, str):
        return seed, kwargs  # a factory seeds its own compressors
    probe = make_compressor(compressor, seed=seed, **kwargs)
    inner = getattr(probe, "inner", probe)
    if (getattr(inner, "kind", None) == "randomk" and "shared_seed" in inner.config()
            and kwargs.get("shared_seed") is None):
        kwargs = {**kwargs, "shared_seed": seed}
        probe = make_compressor(compressor, seed=seed, **kwargs)
    return (seed if exchange_of(probe) != "allgather" else seed + worker), kwargs


def allreduce_wire_bytes(buffer_bytes: float, workers: int) -> float:
    """Bytes one worker sends (and receives) in a ring all-reduce of a buffer:
    reduce-scatter then all-gather, each moving (N-1)/N of it."""
    return 2 * (workers - 1) * buffer_bytes / workers


def allgather_wire_bytes(message_bytes: float, workers: int) -> tuple[float, float]:
    """(sent, received) by one worker in an all-gather of equal-length messages: its own
    message once, the other N-1 messages."""
    return float(message_bytes), float((workers - 1) * message_bytes)


def summed(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Sum in the given (rank) order, in the tensors' own dtype (what an all-reduce does)."""
    total = tensors[0].detach().clone()
    for t in tensors[1:]:
        total += t
    return total


def check_compressor_vs_optimizer(comp: Any, optimizer: str) -> None:
    inner = getattr(comp, "inner", comp)
    if getattr(inner, "momentum_correction", False) and optimizer != "sgd":
        raise ValueError(
            f"{inner.kind!r} applies momentum itself (momentum correction), so the optimizer "
            f"must be plain 'sgd', got optimizer={optimizer!r}; or pass "
            "momentum_correction=False")


def dgc_workers(compressor: Any, kwargs: dict[str, Any], workers: int) -> dict[str, Any]:
    """``kwargs`` with DGC's ``num_workers`` (its local clipping bound) defaulted to ``workers``."""
    if isinstance(compressor, str) and normalize_name(compressor) == "dgc":
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
