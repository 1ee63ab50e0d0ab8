"""Uniform affine quantizers: integers, a scale and a zero point, per tensor or per channel.

    q = quantize(w, bits=8, axis=0)        # QTensor; q.values are int8, q.scale is (C,)
    w_hat = q.dequantize()                 # (q - zero_point) * scale
    y = fake_quantize(x, s, z, -128, 127)  # quantize-dequantize, straight-through gradient

Conventions (those of TFLite's int8 spec and PyTorch's observers, so an integer engine can
rely on them):

- Integer ranges are signed. Symmetric: the narrow range [-(2^(b-1)-1), 2^(b-1)-1] (int8:
  [-127, 127], as TFLite and CMSIS-NN use for weights, so -q is always representable), zero
  point 0, scale = max|x| / qmax. Asymmetric: the full range [-2^(b-1), 2^(b-1)-1] (int8:
  [-128, 127], TFLite's activations), the observed [min, max] widened to include 0 (so 0 is
  exact, which zero padding needs), scale = (max - min) / (qmax - qmin) and the integer
  zero point qmin - round(min / scale), clamped to the range. These are the formulas of
  PyTorch's ``MinMaxObserver`` (a custom narrow range makes its symmetric scale max|x|/qmax);
  scales are at least float32's eps, as there, so an all-zero tensor quantizes to zeros.
- Quantizing is q = clamp(round(x * (1 / scale)) + zero_point, qmin, qmax) with float32
  ``1 / scale``, exactly the arithmetic of ``torch.fake_quantize_per_*_affine``. "nearest"
  rounds half to even (``torch.round``, the C ``nearbyint`` PyTorch's kernels call; TFLite's
  reference rounds half away from zero, which differs only on exact ties). "stochastic" is
  floor(x / scale + u), u ~ U[0, 1), whose mean is x / scale (unbiased).
- ``QTensor.values`` are stored in the narrowest signed dtype that holds the range: int8
  for 2-8 bits, int16 for 9-16 bits. ``scale`` is float32 and ``zero_point`` int32, shape ()
  per tensor or (C,) per channel along ``axis``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .._checks import check_choice, check_int

__all__ = ["QTensor", "quantize", "dequantize", "fake_quantize", "qrange", "observe_range",
           "calculate_qparams", "ROUNDINGS", "MIN_BITS", "MAX_BITS", "EPS"]

ROUNDINGS = ("nearest", "stochastic")
MIN_BITS, MAX_BITS = 2, 16
EPS = torch.finfo(torch.float32).eps  # smallest scale, as PyTorch's observers use


def qrange(bits: int, symmetric: bool) -> tuple[int, int]:
    """(qmin, qmax): narrow signed range when symmetric, full signed range otherwise."""
    bits = check_int("bits", bits, low=MIN_BITS, high=MAX_BITS)
    half = 2 ** (bits - 1)
    return (-(half - 1), half - 1) if symmetric else (-half, half - 1)


def storage_dtype(bits: int) -> torch.dtype:
    """The narrowest signed integer dtype that holds a ``bits``-bit range."""
    return torch.int8 if bits <= 8 else torch.int16


def _check_axis(x: torch.Tensor, axis: int | None) -> int | None:
    if axis is None:
        return None
    check_int("axis", axis)
    if not -x.dim() <= axis < x.dim():
        raise ValueError(f"axis={axis} is not an axis of a tensor of shape {tuple(x.shape)}; "
                         f"use axis in [{-x.dim()}, {x.dim() - 1}] or axis=None (per tensor)")
    return axis % x.dim()


def _check_float(name: str, x: object) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        got = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
        raise TypeError(f"{name} must be a floating-point torch.Tensor, got {got}; "
                        f"convert it first, e.g. {name}.float()")
    bad = (~torch.isfinite(x.detach())).sum().item()
    if bad:
        raise ValueError(f"{name} has {bad} non-finite value(s) (nan or inf) out of "
                         f"{x.numel()}; quantization needs finite values")
    return x


def observe_range(x: torch.Tensor, axis: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(min, max) of ``x`` as float32: scalars per tensor, (C,) per channel along ``axis``."""
    x = _check_float("x", x).detach().float()
    axis = _check_axis(x, axis)
    if axis is None:
        return torch.aminmax(x)
    lo, hi = torch.aminmax(x.transpose(0, axis).reshape(x.shape[axis], -1), dim=1)
    return lo, hi


def calculate_qparams(min_val: torch.Tensor, max_val: torch.Tensor, bits: int = 8,
                      symmetric: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale float32, zero_point int32) from an observed range, as PyTorch's observers."""
    qmin, qmax = qrange(bits, symmetric)
    min_neg = torch.clamp(torch.as_tensor(min_val, dtype=torch.float32), max=0.0)
    max_pos = torch.clamp(torch.as_tensor(max_val, dtype=torch.float32), min=0.0)
    if symmetric:
        scale = torch.clamp(torch.maximum(-min_neg, max_pos) / (float(qmax - qmin) / 2), min=EPS)
        return scale, torch.zeros_like(scale, dtype=torch.int32)
    scale = torch.clamp((max_pos - min_neg) / float(qmax - qmin), min=EPS)
    zero_point = qmin - torch.round(min_neg / scale).to(torch.int32)
    return scale, torch.clamp(zero_point, qmin, qmax).to(torch.int32)


def _as_scale(scale: object, x: torch.Tensor, axis: int | None) -> torch.Tensor:
    """``scale`` as a float32 tensor of shape () or (C,), every entry finite and > 0."""
    s = torch.as_tensor(scale, dtype=torch.float32).detach()
    want = () if axis is None else (x.shape[axis],)
    if s.dim() == 1 and s.numel() == 1 and axis is None:
        s = s.reshape(())
    if tuple(s.shape) != want:
        raise ValueError(f"scale has shape {tuple(s.shape)}, expected {want} for axis={axis} "
                         f"and a tensor of shape {tuple(x.shape)}")
    if not bool(torch.isfinite(s).all()) or bool((s <= 0).any()):
        raise ValueError(f"scale must be finite and > 0, got scale={s.tolist()}; "
                         "pass a positive step size (e.g. from calculate_qparams)")
    return s


def _as_zero_point(zero_point: object, scale: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    """``zero_point`` as an int32 tensor shaped like ``scale``, inside [qmin, qmax]."""
    z = torch.as_tensor(zero_point).detach()
    if z.is_floating_point():
        if not bool((z == torch.round(z)).all()):
            raise ValueError(f"zero_point must be integer-valued, got {z.tolist()}; "
                             "round it (e.g. calculate_qparams returns int32 zero points)")
    elif z.dtype == torch.bool or z.is_complex():
        raise TypeError(f"zero_point must be an integer or integer tensor, got {z.dtype}")
    z = z.to(torch.int32)
    if z.numel() == 1:
        z = z.reshape(()).expand_as(scale).clone()
    elif tuple(z.shape) != tuple(scale.shape):
        raise ValueError(f"zero_point has shape {tuple(z.shape)}, expected one value or "
                         f"{tuple(scale.shape)} like scale")
    if bool((z < qmin).any()) or bool((z > qmax).any()):
        raise ValueError(f"zero_point must lie in [qmin, qmax] = [{qmin}, {qmax}], "
                         f"got zero_point={z.tolist()}")
    return z


@dataclass(frozen=True, eq=False)
class QTensor:
    """A quantized tensor: ``values`` (int8 for <= 8 bits, int16 up to 16), a float32
    ``scale`` and an int32 ``zero_point`` of shape () or (C,) along ``axis``."""

    values: torch.Tensor
    scale: torch.Tensor
    zero_point: torch.Tensor
    bits: int
    symmetric: bool
    axis: int | None = None

    def __post_init__(self) -> None:
        check_int("bits", self.bits, low=MIN_BITS, high=MAX_BITS)
        if self.values.dtype != storage_dtype(self.bits):
            raise TypeError(f"values must be {storage_dtype(self.bits)} for bits={self.bits}, "
                            f"got {self.values.dtype}")
        axis = _check_axis(self.values, self.axis)
        want = () if axis is None else (self.values.shape[axis],)
        for name, t, dtype in (("scale", self.scale, torch.float32),
                               ("zero_point", self.zero_point, torch.int32)):
            if t.dtype != dtype or tuple(t.shape) != want:
                raise ValueError(f"{name} must be {dtype} of shape {want} for axis={self.axis}, "
                                 f"got {t.dtype} of shape {tuple(t.shape)}")
        if self.symmetric and bool((self.zero_point != 0).any()):
            raise ValueError(f"a symmetric QTensor has zero_point 0, got {self.zero_point.tolist()}")
        object.__setattr__(self, "axis", axis)

    @property
    def qmin(self) -> int:
        return qrange(self.bits, self.symmetric)[0]

    @property
    def qmax(self) -> int:
        return qrange(self.bits, self.symmetric)[1]

    def _broadcast(self, t: torch.Tensor) -> torch.Tensor:
        if self.axis is None:
            return t
        shape = [1] * self.values.dim()
        shape[self.axis] = -1
        return t.reshape(shape)

    def dequantize(self) -> torch.Tensor:
        """(values - zero_point) * scale as float32, the tensor the integers stand for."""
        centred = self.values.to(torch.int32) - self._broadcast(self.zero_point)
        return centred.to(torch.float32) * self._broadcast(self.scale)


def dequantize(q: QTensor) -> torch.Tensor:
    """``q.dequantize()``: (values - zero_point) * scale as float32."""
    if not isinstance(q, QTensor):
        raise TypeError(f"dequantize takes a QTensor (from quantize), got {type(q).__name__}")
    return q.dequantize()


def _integers(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, axis: int | None,
              rounding: str, generator: torch.Generator | None) -> torch.Tensor:
    """round(x * (1 / scale)) + zero_point, unclamped, in x's promoted float dtype."""
    dtype = torch.promote_types(x.dtype, torch.float32)
    shape = [1] * x.dim()
    if axis is not None:
        shape[axis] = -1
    inv = torch.reciprocal(scale).reshape(shape).to(dtype)  # float32 1/scale, as PyTorch
    y = x.to(dtype) * inv
    if rounding == "nearest":
        y = torch.round(y)                                   # half to even
    else:
        u = torch.rand(y.shape, generator=generator, dtype=dtype, device=y.device)
        y = torch.floor(y + u)
    return y + zero_point.reshape(shape).to(dtype)


def quantize(x: torch.Tensor, bits: int = 8, symmetric: bool = True, axis: int | None = None,
             rounding: str = "nearest", generator: torch.Generator | None = None,
             scale: torch.Tensor | float | None = None,
             zero_point: torch.Tensor | int | None = None) -> QTensor:
    """Quantize ``x`` per tensor (axis=None) or per channel along ``axis`` to ``bits`` bits.

    Without ``scale`` the range is observed from ``x`` (see the module notes). An explicit
    ``scale`` (activations with observed ranges) needs a ``zero_point`` when asymmetric.
    """
    x = _check_float("x", x).detach()
    check_int("bits", bits, low=MIN_BITS, high=MAX_BITS)
    axis = _check_axis(x, axis)
    check_choice("rounding", rounding, ROUNDINGS)
    qmin, qmax = qrange(bits, bool(symmetric))
    if scale is None:
        if zero_point is not None:
            raise ValueError(f"zero_point={zero_point!r} given without scale; pass both, or "
                             "neither to observe them from x")
        scale, zero_point = calculate_qparams(*observe_range(x, axis), bits, bool(symmetric))
    else:
        scale = _as_scale(scale, x, axis)
        if zero_point is None and not symmetric:
            raise ValueError("an asymmetric quantize with an explicit scale needs its "
                             "zero_point too, e.g. from calculate_qparams")
        zero_point = _as_zero_point(0 if zero_point is None else zero_point, scale, qmin, qmax)
        if symmetric and bool((zero_point != 0).any()):
            raise ValueError(f"symmetric quantization has zero_point 0, got "
                             f"{zero_point.tolist()}; use symmetric=False for an offset")
    q = torch.clamp(_integers(x, scale, zero_point, axis, rounding, generator), qmin, qmax)
    return QTensor(q.to(storage_dtype(bits)), scale, zero_point, bits, bool(symmetric), axis)


class _FakeQuantize(torch.autograd.Function):
    """Quantize-dequantize with PyTorch's straight-through estimator: the gradient passes
    where the unclamped integer lies in [qmin, qmax] and is 0 elsewhere."""

    @staticmethod
    def forward(ctx, x, scale, zero_point, qmin, qmax, axis, rounding, generator):  # type: ignore[override]
        q = _integers(x, scale, zero_point, axis, rounding, generator)
        inside = (q >= qmin) & (q <= qmax)
        ctx.save_for_backward(inside)
        shape = [1] * x.dim()
        if axis is not None:
            shape[axis] = -1
        centred = torch.clamp(q, qmin, qmax) - zero_point.reshape(shape).to(q.dtype)
        return (centred * scale.reshape(shape).to(q.dtype)).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        (inside,) = ctx.saved_tensors
        return grad * inside, None, None, None, None, None, None, None


def fake_quantize(x: torch.Tensor, scale: torch.Tensor | float, zero_point: torch.Tensor | int,
                  qmin: int, qmax: int, axis: int | None = None, *, rounding: str = "nearest",
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Quantize then dequantize ``x`` in its own dtype; gradient 1 where the rounded value
    lies in [qmin, qmax], 0 outside (PyTorch's definition). "nearest" runs on
    ``torch.fake_quantize_per_tensor_affine`` / ``_per_channel_affine``; "stochastic" on an
    autograd function of the same arithmetic. ``scale`` and ``zero_point`` get no gradient."""
    _check_float("x", x)
    qmin = check_int("qmin", qmin)
    qmax = check_int("qmax", qmax, low=qmin + 1)
    axis = _check_axis(x, axis)
    check_choice("rounding", rounding, ROUNDINGS)
    s = _as_scale(scale, x, axis)
    z = _as_zero_point(zero_point, s, qmin, qmax)
    if rounding == "stochastic":
        return _FakeQuantize.apply(x, s, z, qmin, qmax, axis, rounding, generator)
    if axis is None:
        return torch.fake_quantize_per_tensor_affine(x, s.reshape(1), z.reshape(1), qmin, qmax)
    return torch.fake_quantize_per_channel_affine(x, s, z, axis, qmin, qmax)
