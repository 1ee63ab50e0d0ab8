"""The Compressor base class, the receiver's context and the tensor checks.

Subclasses implement ``_encode`` (fp32 tensor -> payload, meta) and ``_decode``
(payload, ctx -> fp32 tensor); the base class validates input, counts steps per
tensor name, builds the context and casts back to the caller's dtype. (The dense codecs,
``cast``, override ``compress`` and ``decompress`` themselves for a short per-call path.)

NaN and inf. Every compressor here except the dense three refuses a gradient holding
NaN or +-inf with a ValueError naming the tensor and the first bad entry: in a top-k, a
quantizer's norm or a low-rank factor one bad entry spoils other entries, so what would
arrive is not what was given. The dense three ('none', 'fp16', 'bf16') are transparent
instead, as PyTorch's own allreduce and fp16/bf16 hooks: NaN and inf of the input travel
as they are, and only a cast that turns a finite entry into inf is refused (see ``cast``).

Where refused, finiteness costs no extra pass if a compressor reduces the tensor anyway: a
sum, a norm or a largest magnitude is NaN or inf whenever an entry is, so ``_encode`` hands
that result to ``require_finite``, which scans the tensor (to name the bad entry) only when
the result is not finite. Compressors that compute no such reduction leave
``folds_finite_check`` False and the base class sums the tensor once (a sum reads each
entry once and is several times cheaper than ``isfinite(x).all()``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import torch

from .._checks import check_real, check_seed
from .wire import Payload, payload_nbytes


@dataclass(frozen=True)
class Ctx:
    """What the receiver needs that does not travel: known from shape and shared config."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    step: int
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


_new_object = object.__new__


def make_ctx(name: str, shape: tuple[int, ...], dtype: torch.dtype, step: int,
             meta: dict[str, Any]) -> Ctx:
    """``Ctx(name, shape, dtype, step, meta)`` without the frozen dataclass's ``__init__``
    (one attribute write per field): the per-call path builds one context per tensor and
    its fields are already known valid. The result is an ordinary, equal Ctx."""
    ctx = _new_object(Ctx)
    ctx.__dict__.update(name=name, shape=shape, dtype=dtype, step=step, meta=meta)
    return ctx


class Compressor:
    """Base class; see the package docstring for the contract."""

    kind: str = "?"
    unbiased: bool = False  # E[decompress(compress(g))] == g
    stochastic: bool = False  # draws random numbers (seeded by seed, name, step)
    needs_error_feedback: bool = False  # biased enough that plain SGD may stall
    feedback_builtin: bool = False  # keeps its own residual or accumulator
    keep_dtype: bool = False  # _encode sees the caller's dtype instead of fp32
    fixed_size: bool = True  # payload shapes follow from the tensor's shape and the config
    # Workers' payloads may be summed entry by entry (an all-reduce) and the sum decoded
    # as the sum of their decoded tensors: same layout, same positions, linear decoding.
    # True for the dense casts and random-k with a shared seed; a data-parallel exchange
    # all-gathers payloads where it is False.
    summable: bool = False
    # _encode calls require_finite on a reduction it computes anyway, or (the dense three)
    # the input is not scanned for NaN/inf at all (see module docstring)
    folds_finite_check: bool = False

    def __init__(self, *, seed: int = 0) -> None:
        self.seed = check_seed("seed", seed)
        self._steps: dict[str, int] = {}

    @property
    def biased(self) -> bool:
        return not self.unbiased

    # -- the contract --------------------------------------------------
    def compress(self, tensor: torch.Tensor, name: str) -> tuple[Payload, Ctx]:
        """Encode ``tensor`` (known as ``name``) into wire tensors and a local context."""
        x = check_kind(tensor, name)
        if x.requires_grad:
            x = x.detach()
        if not self.folds_finite_check:
            require_finite(x.sum(), x, name)
        step = self._steps.get(name, 0)
        work = x if self.keep_dtype or x.dtype == torch.float32 else as_fp32(x, name)
        payload, meta = self._encode(work, name, step)
        if type(payload) is not tuple:
            payload = tuple(payload)
        ctx = make_ctx(name, tuple(tensor.shape), tensor.dtype, step, meta)
        if tensor.dtype is torch.float16 or tensor.dtype is torch.bfloat16:
            check_decodable(self, payload, ctx)
        self._steps[name] = step + 1
        return payload, ctx

    def decompress(self, payload: Payload, ctx: Ctx) -> torch.Tensor:
        """Rebuild a tensor of the original shape and dtype from the payload."""
        out = self._decode(payload if type(payload) is tuple else tuple(payload), ctx)
        out = out if out.shape == ctx.shape else out.reshape(ctx.shape)
        return out if out.dtype == ctx.dtype else out.to(ctx.dtype)

    def nbytes(self, payload: Payload) -> int:
        """Exact bytes on the wire (packed codes, indices, scales and norms included)."""
        return payload_nbytes(payload)

    # -- to implement --------------------------------------------------
    def _encode(self, x: torch.Tensor, name: str, step: int) -> tuple[Payload, dict]:
        raise NotImplementedError

    def _decode(self, payload: Payload, ctx: Ctx) -> torch.Tensor:
        raise NotImplementedError

    # -- state ---------------------------------------------------------
    def config(self) -> dict[str, Any]:
        """The keyword arguments that rebuild this compressor with ``get(kind, **config)``."""
        return {"seed": self.seed}

    def state_dict(self) -> dict[str, Any]:
        """Per-name step counters plus any per-tensor state (tensors are cloned)."""
        return {"steps": dict(self._steps)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "steps" not in state:
            raise ValueError(f"state for {self.kind!r} lacks 'steps'; got keys {sorted(state)}")
        self._steps = {str(k): int(v) for k, v in state["steps"].items()}

    def reset(self) -> None:
        """Forget all per-tensor state: the next calls replay a fresh compressor's."""
        self._steps = {}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({args})"


# -- checks ------------------------------------------------------------
def check_kind(tensor: torch.Tensor, name: str) -> torch.Tensor:
    """A non-empty floating tensor, else TypeError/ValueError naming it (no pass over it)."""
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"tensor {name!r} must be a torch.Tensor, got {type(tensor).__name__}")
    if not tensor.is_floating_point():
        raise ValueError(f"tensor {name!r} has dtype {tensor.dtype}; compress floating gradients")
    if tensor.numel() == 0:
        raise ValueError(f"tensor {name!r} is empty (shape {tuple(tensor.shape)}); nothing to send")
    return tensor


def check_tensor(tensor: torch.Tensor, name: str) -> torch.Tensor:
    """A non-empty floating tensor with only finite entries, else ValueError naming it."""
    check_kind(tensor, name)
    require_finite(tensor.detach().sum(), tensor, name)
    return tensor


def require_finite(reduced: torch.Tensor | float, tensor: torch.Tensor, name: str) -> bool:
    """True if ``reduced`` is finite. ``reduced`` is a reduction of ``tensor`` that is NaN or
    inf whenever an entry is (a sum, a norm, a largest magnitude). Otherwise the tensor is
    scanned: a non-finite entry raises a ValueError naming the tensor and the first bad
    entry; if there is none (the reduction itself overflowed) the answer is False, and the
    caller takes its overflow-safe path."""
    if math.isfinite(float(reduced)):
        return True
    finite = torch.isfinite(tensor.detach())
    if bool(finite.all()):
        return False
    bad = (~finite).reshape(-1).nonzero()
    first = int(bad[0])
    value = float(tensor.detach().reshape(-1)[first])
    raise ValueError(
        f"tensor {name!r} has {bad.numel()} non-finite entries (first: {value} at flat "
        f"index {first}); compressors need finite gradients: lower the learning rate or "
        "loss scale, or clip gradients before compressing"
    )


FP32_MAX = torch.finfo(torch.float32).max
HALF_DTYPES = (torch.float16, torch.bfloat16)


def as_fp32(x: torch.Tensor, name: str) -> torch.Tensor:
    """``x`` as float32, refusing float64 values beyond float32's range (they would be inf)."""
    if x.dtype == torch.float64:
        peak = float(x.abs().max())
        require_finite(peak, x, name)
        if peak > FP32_MAX:
            raise ValueError(
                f"tensor {name!r} has |value| {peak:.4g} above the float32 maximum "
                f"{FP32_MAX:.4g}; compressors work in float32: scale or clip the gradient down")
    return x.float()


def check_decodable(codec: Compressor, payload: Payload, ctx: Ctx) -> None:
    """For float16/bfloat16 tensors, refuse a payload whose decoded values overflow that
    dtype (e.g. QSGD levels of a bucket norm above 65504). Float32 decodes are kept finite
    by each compressor's own arithmetic."""
    if ctx.dtype not in HALF_DTYPES:
        return
    top = torch.finfo(ctx.dtype).max
    peak = float(codec.decompress(payload, dataclasses.replace(ctx, dtype=torch.float32))
                 .abs().max())
    if peak > top:
        raise ValueError(
            f"tensor {ctx.name!r} ({ctx.dtype}) would decode to |value| {peak:.4g} above the "
            f"{ctx.dtype} maximum {top:g} under {codec.kind!r}; compress a float32 copy "
            "(tensor.float()) or scale the gradient down")


def check_fraction(name: str, value: object) -> float:
    """A number in (0, 1], e.g. a density (0.01 keeps 1%)."""
    return check_real(name, value, low=0.0, high=1.0, low_open=True)


def keep_count(numel: int, density: float | None, k: int | None, name: str) -> int:
    """Entries to keep: ``k`` as given or ceil(density * numel) (at least 1)."""
    if k is not None:
        if k > numel:
            raise ValueError(f"k={k} exceeds the {numel} entries of tensor {name!r}; lower k")
        return k
    # the epsilon keeps 0.07 * 100 (= 7.000000000000001 in floats) at 7
    return max(1, math.ceil(density * numel - 1e-9))
