"""The operators of the int8 graph. Each takes and returns integer-valued float64 tensors
(exact: every int32 sum of this graph is far below 2^53) and keeps its output's scale and
zero point as buffers ``out_scale`` / ``out_zp``.

Forward values are the integer engine's, bit for bit; where gradients flow, the backward is
the straight-through estimator: requantization's rounding counts as the identity and its
clamp as a mask (see ``QOp.finish``).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from ._fixed_point import INT32_MAX, INT32_MIN, Multiplier, multipliers, rounding_divide
from .quantizers import quantize

WEIGHT_QMAX = 127  # int8 weights live in the narrow range [-127, 127] (TFLite, CMSIS-NN)
QMIN, QMAX = -128, 127  # int8 activations


def channel_view(kind: str, ndim: int) -> tuple[int, ...]:
    """The shape that makes a per-output-channel (C,) tensor broadcast over a layer's
    output: channels on dim 1 for convs (B, C, ...), on the last dim for linears."""
    return (-1,) if kind == "linear" else (1, -1, *([1] * (ndim - 2)))


def activation_range(act: str | None, scale: float, zero_point: int) -> tuple[int, int]:
    """The int8 clamp range with a fused ReLU/ReLU6, as TFLite's
    ``CalculateActivationRangeQuantized``: [zp, zp + round(6 / s)] within [-128, 127]."""
    if act is None:
        return QMIN, QMAX
    low = max(QMIN, zero_point)
    if act == "relu6":
        return low, min(QMAX, zero_point + math.floor(6.0 / scale + 0.5))
    return low, QMAX


class QOp(nn.Module):
    """Base of the int8 operators: output quantization and the clamp of a fused ReLU/ReLU6
    (``act`` None, "relu" or "relu6")."""

    def __init__(self, path: str, out_scale: float, out_zp: int, act: str | None = None) -> None:
        super().__init__()
        self.path, self.act = path, act  # path: the float model's module this came from
        self.register_buffer("out_scale", torch.tensor(out_scale, dtype=torch.float32))
        self.register_buffer("out_zp", torch.tensor(out_zp, dtype=torch.int64))
        self.act_min, self.act_max = activation_range(act, float(self.out_scale), out_zp)

    def finish(self, r: torch.Tensor, linear: torch.Tensor | None) -> torch.Tensor:
        """The output: ``r`` (int64, rounded, zero point added) clamped to [act_min,
        act_max], as float64. If ``linear`` (the same unrounded, without zero point)
        carries gradients, they pass straight through, masked as in the float model: a
        fused ReLU passes where the real value > z, a ReLU6 where z < real < z + 6 / s, and
        the int8 quantizer where r lies in [-128, 127]."""
        q = torch.clamp(r, self.act_min, self.act_max).to(torch.float64)
        if linear is None or not linear.requires_grad:
            return q
        inside = (r >= QMIN) & (r <= QMAX)
        if self.act is not None:
            inside &= linear.detach() > 0
        if self.act == "relu6":
            inside &= linear.detach() < 6.0 / float(self.out_scale)
        return q + (linear - linear.detach()) * inside

    def extra_repr(self) -> str:
        rounding = getattr(self, "requantize", None)
        return (f"path={self.path!r}, out_scale={float(self.out_scale):.4g}, "
                f"out_zp={int(self.out_zp)}, clamp=[{self.act_min}, {self.act_max}]"
                + (f", requantize={rounding!r}" if rounding else ""))


class QLayer(QOp):
    """Conv1d, Conv2d (groups and depthwise too) or Linear with int8 weights (per output
    channel scale ``w_scale``), an int32 bias in units of s_W * s_x, int32 accumulation and
    requantization by a Q31 multiplier and shift per output channel, rounded once or twice
    (``requantize``, see ``_fixed_point``).

    ``weight`` (float32) and ``bias`` (float64) are the trainable integer values."""

    def __init__(self, path: str, kind: str, weight: torch.Tensor, bias: torch.Tensor,
                 w_scale: torch.Tensor, in_qparams: tuple[float, int],
                 out_qparams: tuple[float, int], act: str | None,
                 conv_args: dict[str, object], requantize: str) -> None:
        super().__init__(path, *out_qparams, act)
        self.kind, self.conv_args, self.requantize = kind, dict(conv_args), requantize
        self.weight = nn.Parameter(weight.to(torch.float32))
        self.bias = nn.Parameter(bias.to(torch.float64))
        self.register_buffer("w_scale", w_scale.to(torch.float32))
        self.register_buffer("in_scale", torch.tensor(in_qparams[0], dtype=torch.float32))
        self.register_buffer("in_zp", torch.tensor(in_qparams[1], dtype=torch.int64))
        # M = s_W * s_x / s_y per output channel, in double as TFLite computes it
        real = self.w_scale.double() * float(self.in_scale) / float(self.out_scale)
        self.register_buffer("m_real", real)
        m0, shift = multipliers(real)
        self.register_buffer("m0", m0)
        self.register_buffer("shift", shift)

    def _stamp(self) -> tuple[int, ...]:
        """Changes whenever weight or bias is written in place or replaced."""
        return (self.weight._version, self.weight.data_ptr(), self.bias._version,
                self.bias.data_ptr())

    def check_integers(self) -> None:
        """Refuse weights or biases that are not integers in range: the graph's contract.
        Checked again only after the tensors changed (an optimizer step, a load)."""
        if getattr(self, "_checked", None) == self._stamp():
            return
        for name, t, low, high in (("weight", self.weight, -WEIGHT_QMAX, WEIGHT_QMAX),
                                   ("bias", self.bias, INT32_MIN, INT32_MAX)):
            v = t.detach()
            bad = int(((v != torch.round(v)) | (v < low) | (v > high)).sum())
            if bad:
                raise ValueError(
                    f"int8 layer {self.path!r}: {bad} {name} value(s) are not integers in "
                    f"[{low}, {high}] (an optimizer step without re-rounding?); call "
                    "model.round_() after each step, or round_after_step_(optimizer, model)")
        # every partial sum is an integer of magnitude <= taps * 255 * 127 + max|b|
        taps = self.weight[0].numel()  # in_channels / groups * kernel elements
        bound = taps * 255 * WEIGHT_QMAX + float(self.bias.detach().abs().max())
        self._exact_dtype = torch.float32 if bound < 2**24 else torch.float64
        self._checked = self._stamp()

    def accumulate(self, x: torch.Tensor) -> torch.Tensor:
        """int32 accumulator (B, C, ...) = sum (q_x - z_x) * W_int + b_int, exact: in float32
        when every partial sum stays below 2^24 (exact in any summation order, and fast
        kernels for depthwise convs), else in float64 (exact below 2^53)."""
        self.check_integers()
        dtype = self._exact_dtype
        xc = (x - self.in_zp.to(x.dtype)).to(dtype)  # zero padding of x - z_x: padding with z_x
        w, b = self.weight.to(dtype), self.bias.to(dtype)
        if self.kind == "linear":
            return F.linear(xc, w, b).to(torch.float64)
        conv = F.conv1d if self.kind == "conv1d" else F.conv2d
        return conv(xc, w, b, **self.conv_args).to(torch.float64)

    def multiplier(self, ndim: int) -> Multiplier:
        """The per-channel requantization multiplier, shaped for an ``ndim`` output."""
        cache = self.__dict__.setdefault("_multipliers", {})
        key = (ndim, self.m0._version, self.m0.data_ptr(), self.shift._version,  # a load resets
               self.requantize)
        if key not in cache:
            cache.clear()
            cache[key] = Multiplier(self.m0, self.shift, self.requantize).view(
                *channel_view(self.kind, ndim))
        return cache[key]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        acc = self.accumulate(x)
        acc_int = acc.detach().to(torch.int64)
        if bool((acc_int.abs() > INT32_MAX).any()):
            raise OverflowError(f"int8 layer {self.path!r}: the int32 accumulator overflows "
                                f"(max |acc| = {int(acc_int.abs().max())}); its bias or "
                                "inputs are out of the range the graph was calibrated for")
        r = self.multiplier(acc.dim())(acc_int) + int(self.out_zp)
        linear = None
        if acc.requires_grad:  # the real-valued rescaling, for the backward
            linear = acc * self.m_real.reshape(channel_view(self.kind, acc.dim()))
        return self.finish(r, linear)


class QAdd(QOp):
    """Residual add of two int8 tensors as TFLite's integer ADD: both inputs rescaled to
    2^20 / (2 max(s1, s2)) units by Q31 multipliers, summed, requantized to the output;
    all three multiplies round as ``requantize`` says."""

    LEFT_SHIFT = 20

    def __init__(self, path: str, in_qparams: tuple[tuple[float, int], tuple[float, int]],
                 out_qparams: tuple[float, int], act: str | None, requantize: str) -> None:
        super().__init__(path, *out_qparams, act)
        self.requantize = requantize
        (s1, z1), (s2, z2) = in_qparams
        self.register_buffer("in_scale", torch.tensor([s1, s2], dtype=torch.float32))
        self.register_buffer("in_zp", torch.tensor([z1, z2], dtype=torch.int64))
        twice_max = 2.0 * max(float(s1), float(s2))
        real = torch.tensor([float(s1) / twice_max, float(s2) / twice_max,
                             twice_max / (2**self.LEFT_SHIFT * float(self.out_scale))],
                            dtype=torch.float64)
        m0, shift = multipliers(real)
        self.register_buffer("m0", m0)
        self.register_buffer("shift", shift)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        m = [Multiplier(self.m0[i], self.shift[i], self.requantize) for i in range(3)]
        zp = [int(z) for z in self.in_zp]
        scaled = [m[i]((x.detach().to(torch.int64) - zp[i]) * 2**self.LEFT_SHIFT)
                  for i, x in enumerate((a, b))]
        r = m[2](scaled[0] + scaled[1]) + int(self.out_zp)
        linear = None
        if a.requires_grad or b.requires_grad:  # d out / d q_i = s_i / s_out
            g = (self.in_scale.double() / float(self.out_scale)).tolist()
            linear = (a - zp[0]) * g[0] + (b - zp[1]) * g[1]
        return self.finish(r, linear)


class QAvgPool(QOp):
    """Average pooling (padding 0) or global average pooling, same scale and zero point in
    and out, as TFLite's integer pool: window sum, then (sum +- n / 2) / n in C division."""

    def __init__(self, path: str, qparams: tuple[float, int], dims: int,
                 kernel: tuple[int, ...] | None = None,
                 stride: tuple[int, ...] | None = None) -> None:
        super().__init__(path, *qparams)
        self.dims, self.kernel, self.stride = dims, kernel, stride  # kernel None: global

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel is None:
            spatial = tuple(range(2, x.dim()))
            total = x.sum(dim=spatial, keepdim=True)         # (B, C, 1[, 1])
            count = math.prod(x.shape[2:])
        else:
            pool = F.avg_pool1d if self.dims == 1 else F.avg_pool2d
            count = math.prod(self.kernel)
            total = pool(x, self.kernel, self.stride) * count  # exact: integers over count
        r = rounding_divide(total.detach().round().to(torch.int64), count)
        return self.finish(r, (total / count) - int(self.out_zp))


class QMaxPool(QOp):
    """Max pooling: order-preserving, so it runs on the integers unchanged."""

    def __init__(self, path: str, qparams: tuple[float, int], module: nn.Module) -> None:
        super().__init__(path, *qparams)
        self.pool = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(x)


class QAct(QOp):
    """A ReLU or ReLU6 that could not be fused: a clamp in the input's quantization."""

    def __init__(self, path: str, qparams: tuple[float, int], act: str) -> None:
        super().__init__(path, *qparams, act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.finish(x.detach().to(torch.int64), x - int(self.out_zp))


class QFlatten(QOp):
    """Flatten: a reshape, quantization unchanged."""

    def __init__(self, path: str, qparams: tuple[float, int], start_dim: int, end_dim: int) -> None:
        super().__init__(path, *qparams)
        self.start_dim, self.end_dim = start_dim, end_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(x, self.start_dim, self.end_dim)


class QInput(QOp):
    """Quantizes the float input: clamp(round(x / s) + z, -128, 127), as the quantizers do."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = quantize(x.detach().float(), bits=8, symmetric=False, scale=self.out_scale,
                     zero_point=self.out_zp)
        return q.values.to(torch.float64)


class FloatHead(nn.Linear):
    """A float classifier head: dequantizes its int8 input and runs as the float Linear."""

    def __init__(self, path: str, linear: nn.Linear, in_qparams: tuple[float, int]) -> None:
        nn.Module.__init__(self)  # no fresh init (it would draw from the global RNG)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = nn.Parameter(linear.weight.detach().clone())
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone())
        self.path = path
        self.register_buffer("in_scale", torch.tensor(in_qparams[0], dtype=torch.float32))
        self.register_buffer("in_zp", torch.tensor(in_qparams[1], dtype=torch.int64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = ((x - self.in_zp.double()) * self.in_scale.double()).to(torch.float32)
        return super().forward(features)
