"""The training precisions: what each stores, what it computes in, and how odtkit runs it.

    info = precision_info("bf16")        # Precision(...): bytes per element, master weights
    PRECISIONS                           # fp32, bf16, fp16, fp8-e4m3, fp8-e5m2, int8

The one description of each precision that training, the memory model and the roofline
read. Bytes are per element: ``weight_bytes`` of the weight copy the arithmetic reads,
``activation_bytes`` of an activation kept for backward, ``gradient_bytes`` of a weight
gradient; ``master_weights`` adds an fp32 copy (4 bytes per element) that the optimizer
updates. How ``odt.train`` runs each one:

- "fp32": plain float32, no cast anywhere.
- "bf16": ``torch.autocast("cpu", dtype=torch.bfloat16)`` around forward and loss; the
  parameters stay float32 (the master weights) and so do their gradients.
- "fp16": ``torch.autocast("cpu", dtype=torch.float16)`` around forward and loss and
  ``torch.amp.GradScaler("cpu")``: the loss is multiplied by the scale before backward,
  gradients are unscaled before the step; a step whose gradients hold inf/NaN is skipped
  (weights untouched) and the scale halves; after 2000 good steps it doubles.
- "fp8-e4m3" / "fp8-e5m2": simulated (CPU has no float8 matmul) by ``fp8_autocast``:
  every conv/linear call (``F.conv1d/2d/3d``, ``F.linear``) in forward gets its input and
  its weight through ``fp8_cast`` (per-tensor scale = amax / the format's max, computed
  anew at every call, so per tensor per step), with a straight-through gradient; in
  backward the gradient arriving at each cast (the layer input's gradient, the weight's
  gradient) goes through ``fp8_cast`` too. Biases, norms, activations functions, the loss
  and the optimizer stay float32; the parameters are the fp32 master weights.
- "int8": the int8 graph of ``odtkit.quant.to_int8``, trained in integer units and
  re-rounded after each optimizer step (``round_after_step_``), QAS optional (``qas_``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode

from .._checks import check_choice, lookup

__all__ = ["PRECISIONS", "Precision", "precision_info", "fp8_cast", "fp8_autocast",
           "FP8_DTYPES", "is_fp8_cast"]

PRECISIONS = ("fp32", "bf16", "fp16", "fp8-e4m3", "fp8-e5m2", "int8")
FP8_DTYPES = {"fp8-e4m3": torch.float8_e4m3fn, "fp8-e5m2": torch.float8_e5m2}


@dataclass(frozen=True)
class Precision:
    """What one precision stores and computes in (bytes are per element).

    ``profile_dtype``: the dtype of a hardware profile's ``peak_macs_per_s`` table
    ("int8", "fp16", "fp32") whose peak the roofline uses; ``profile_note`` says why when
    that dtype is a stand-in (no profile lists the precision's own peak), else "".
    ``autocast_dtype`` / ``float8_dtype``: the torch dtype ``odt.train`` computes in
    through autocast / through ``fp8_cast`` (None where it does not).
    """

    name: str
    compute: str  # what the arithmetic runs in, in words
    weight_bytes: int  # the weight copy the arithmetic reads
    activation_bytes: int  # an activation kept for backward
    gradient_bytes: int  # a weight gradient as the optimizer receives it
    master_weights: bool  # an fp32 copy the optimizer updates, kept besides
    loss_scaler: bool  # a loss scaler with state (its scale) that a resume must restore
    profile_dtype: str
    profile_note: str = ""
    autocast_dtype: torch.dtype | None = None
    float8_dtype: torch.dtype | None = None
    simulated: bool = False  # odtkit emulates the storage in float32 on this machine

    @property
    def master_bytes(self) -> int:
        """Bytes per element of the fp32 master copy (0 where there is none)."""
        return 4 if self.master_weights else 0

    @property
    def fp8_max(self) -> float | None:
        """Largest finite value of the float8 format (448 for e4m3, 57344 for e5m2)."""
        return None if self.float8_dtype is None else float(torch.finfo(self.float8_dtype).max)


_NO_BF16 = ("profiles give no bf16 peak; fp16's is used (same width, the same units on "
            "the devices that have both)")
_NO_FP8 = ("profiles give no fp8 peak; fp16's is used, a lower bound for a device with "
           "fp8 units (odtkit simulates fp8 in float32 here)")
_INFO = {
    "fp32": Precision("fp32", "float32", 4, 4, 4, False, False, "fp32"),
    "bf16": Precision("bf16", "bfloat16 under torch.autocast, float32 parameters",
                      2, 2, 4, True, False, "fp16", _NO_BF16, autocast_dtype=torch.bfloat16),
    "fp16": Precision("fp16", "float16 under torch.autocast with a GradScaler, float32 "
                      "parameters", 2, 2, 4, True, True, "fp16", autocast_dtype=torch.float16),
    "fp8-e4m3": Precision("fp8-e4m3", "float32 with conv/linear inputs, weights and "
                          "gradients cast through float8_e4m3fn (per-tensor scale)",
                          1, 1, 1, True, False, "fp16", _NO_FP8,
                          float8_dtype=torch.float8_e4m3fn, simulated=True),
    "fp8-e5m2": Precision("fp8-e5m2", "float32 with conv/linear inputs, weights and "
                          "gradients cast through float8_e5m2 (per-tensor scale)",
                          1, 1, 1, True, False, "fp16", _NO_FP8,
                          float8_dtype=torch.float8_e5m2, simulated=True),
    "int8": Precision("int8", "the int8 graph (int32 accumulation), trained in integer "
                      "units and re-rounded after each step; float32 gradients",
                      1, 1, 4, False, False, "int8"),
}


def precision_info(name: str) -> Precision:
    """The Precision called ``name`` (case and separators ignored: "FP8_E4M3" works);
    an unknown name raises a ValueError naming the nearest ones and all choices."""
    return _INFO[lookup("precision", name, PRECISIONS)]


def fp8_cast(x: torch.Tensor, dtype: torch.dtype | str = torch.float8_e4m3fn) -> torch.Tensor:
    """``x`` through a float8 format with one per-tensor scale, back in ``x``'s dtype.

    scale = amax(|x|) / max(format); returns ``(x / scale).to(float8).to(x.dtype) * scale``
    (the scaled values clamped to the format's range first). An all-zero or non-finite
    tensor is returned unchanged (no scale exists; a non-finite loss is caught elsewhere).
    No gradient flows through the rounding itself; ``fp8_autocast`` adds the
    straight-through one. ``dtype``: a float8 dtype or "fp8-e4m3" / "fp8-e5m2".
    """
    f8 = _float8(dtype)
    fmax = torch.finfo(f8).max
    amax = float(x.detach().abs().max()) if x.numel() else 0.0
    if amax == 0.0 or amax != amax or amax == float("inf"):
        return x
    scale = amax / fmax
    scaled = torch.clamp(x / scale, -fmax, fmax)
    return scaled.to(f8).to(x.dtype) * scale


def _float8(dtype: torch.dtype | str) -> torch.dtype:
    if isinstance(dtype, str):
        return FP8_DTYPES[check_choice("float8 format", dtype, FP8_DTYPES)]
    if dtype not in FP8_DTYPES.values():
        raise ValueError(f"dtype must be torch.float8_e4m3fn or torch.float8_e5m2, got "
                         f"{dtype}; pass one of them or 'fp8-e4m3' / 'fp8-e5m2'")
    return dtype


_MARK = "_odtkit_fp8_cast"


def is_fp8_cast(t: torch.Tensor) -> bool:
    """True if ``t`` is a copy ``fp8_autocast`` made through ``fp8_cast``: a conv/linear
    input or weight in forward, or the gradient arriving at one of those casts in backward
    (what a device with float8 storage keeps in 1 byte per element). Views of it are not
    marked; the memory model follows their storage."""
    return bool(getattr(t, _MARK, False))


def _marked(out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    if out is not x:  # an all-zero tensor comes back unchanged: not a copy
        setattr(out, _MARK, True)
    return out


class _CastFp8(torch.autograd.Function):
    """Forward: ``fp8_cast``; backward: the incoming gradient through ``fp8_cast`` too
    (straight through the rounding, the gradient stored in fp8). Both copies are marked
    (``is_fp8_cast``) for the memory measurement."""

    @staticmethod
    def forward(ctx: object, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        ctx.dtype = dtype  # type: ignore[attr-defined]
        return _marked(fp8_cast(x, dtype), x)

    @staticmethod
    def backward(ctx: object, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return _marked(fp8_cast(grad, ctx.dtype), grad), None  # type: ignore[attr-defined]


_FP8_OPS = (F.conv1d, F.conv2d, F.conv3d, F.linear)


class _Fp8Mode(TorchFunctionMode):
    def __init__(self, dtype: torch.dtype) -> None:
        super().__init__()
        self.dtype = dtype

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        if func in _FP8_OPS and len(args) >= 2:
            x, w = args[0], args[1]
            args = (_CastFp8.apply(x, self.dtype), _CastFp8.apply(w, self.dtype), *args[2:])
        return func(*args, **kwargs)


@contextlib.contextmanager
def fp8_autocast(dtype: torch.dtype | str = torch.float8_e4m3fn) -> Iterator[None]:
    """Within the block, every ``F.conv1d/2d/3d`` and ``F.linear`` call (so every
    nn.Conv*/nn.Linear) computes on its input and weight cast through ``fp8_cast``, and
    in the backward of what ran inside, the gradients reaching those casts (the input's
    and the weight's) are cast through ``fp8_cast`` as well."""
    with _Fp8Mode(_float8(dtype)):
        yield
