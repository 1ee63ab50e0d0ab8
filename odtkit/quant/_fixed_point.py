"""The integer requantization of integer-only inference engines (TFLite Micro, CMSIS-NN),
exactly, on int64 tensors that hold int32 values.

A real multiplier M = s_W * s_x / s_y is stored as a Q31 integer M0 in [2^30, 2^31) and a
power-of-two exponent: M = M0 * 2^(shift - 31). An int32 accumulator x becomes

    MultiplyByQuantizedMultiplier(x, M0, shift)
        = RoundingDivideByPOT(SaturatingRoundingDoublingHighMul(x * 2^max(shift, 0), M0),
                              max(-shift, 0))

with the C semantics of TFLite's reference code: the high multiply adds a nudge of 2^30
(1 - 2^30 below zero) and divides by 2^31 truncating toward zero; the rounding shift rounds
half away from zero. Two roundings in a row ("double", TFLite's and CMSIS-NN's default
build), so the result can differ by one from round(x * M) when x * M lies within
2^-(right shift + 1) of a half-integer: 0.01% to 0.8% of the outputs of the zoo's conv
layers, and each such step travels through the layers after it.

Both engines also build with one rounding ("single": TFLITE_SINGLE_ROUNDING,
CMSIS_NN_USE_SINGLE_ROUNDING): with t = 31 - shift,

    (x * M0 + 2^(t - 1)) >> t        in 64 bits, an arithmetic (flooring) shift,

which is floor(x * M0 * 2^-t + 1/2): x * M rounded half up, off round(x * M) only through
M0's 31-bit approximation of M.
"""

from __future__ import annotations

import copy
import math

import torch

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
REQUANTIZE = ("single", "double")


def quantize_multiplier(real: float) -> tuple[int, int]:
    """(M0, shift) with real = M0 * 2^(shift - 31), M0 in [2^30, 2^31): TFLite's
    ``QuantizeMultiplier`` (tiny multipliers flush to 0, huge ones saturate)."""
    if not (math.isfinite(real) and real >= 0):
        raise ValueError(f"a requantization multiplier must be finite and >= 0, got {real!r}; "
                         "check the scales it is made of (s_W * s_x / s_y)")
    if real == 0.0:
        return 0, 0
    q, shift = math.frexp(real)                      # real = q * 2^shift, q in [0.5, 1)
    q_fixed = math.floor(q * 2**31 + 0.5)            # std::round of a positive number
    if q_fixed == 2**31:
        q_fixed, shift = q_fixed // 2, shift + 1
    if shift < -31:
        return 0, 0
    if shift > 30:
        return INT32_MAX, 30
    return q_fixed, shift


def multipliers(real: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``quantize_multiplier`` of every entry of ``real``: (M0, shift) as int64 tensors."""
    pairs = [quantize_multiplier(float(r)) for r in real.reshape(-1).tolist()]
    m0 = torch.tensor([p[0] for p in pairs], dtype=torch.int64).reshape(real.shape)
    shift = torch.tensor([p[1] for p in pairs], dtype=torch.int64).reshape(real.shape)
    return m0, shift


def saturating_rounding_doubling_high_mul(a: torch.Tensor, b: torch.Tensor,
                                          b_has_int32_min: bool = True) -> torch.Tensor:
    """(a * b + nudge) / 2^31 truncated, nudge 2^30 (1 - 2^30 if a * b < 0); INT32_MIN^2
    saturates to INT32_MAX. int64 tensors holding int32 values."""
    ab = a * b                                                     # |ab| <= 2^62
    out = torch.div(ab + torch.where(ab >= 0, 2**30, 1 - 2**30), 2**31, rounding_mode="trunc")
    if b_has_int32_min:
        out = torch.where((a == INT32_MIN) & (b == INT32_MIN), INT32_MAX, out)
    return out


class Multiplier:
    """A fixed multiplier (M0, shift), per tensor or per channel, with the constants of
    ``MultiplyByQuantizedMultiplier`` worked out once: 2^left, the right shift, its mask
    and half mask ("double"), the total shift 31 - shift and its half ("single").
    ``view(shape)`` reshapes them all to broadcast (per-channel layers)."""

    def __init__(self, m0: torch.Tensor, shift: torch.Tensor, requantize: str = "double") -> None:
        if requantize not in REQUANTIZE:
            raise ValueError(f"requantize must be one of {REQUANTIZE}, got {requantize!r}")
        self.requantize = requantize
        self.m0 = torch.as_tensor(m0, dtype=torch.int64)
        shift = torch.as_tensor(shift, dtype=torch.int64)
        self.total = 31 - shift                        # in [1, 62] for shift in [-31, 30]
        self.round = torch.bitwise_left_shift(torch.ones_like(self.total), self.total - 1)
        left, self.right = torch.clamp(shift, min=0), torch.clamp(-shift, min=0)
        self.left_mult = torch.bitwise_left_shift(torch.ones_like(left), left)
        self.any_left = bool((left > 0).any())
        self.has_int32_min = bool((self.m0 == INT32_MIN).any())  # never from quantize_multiplier
        self.mask = torch.bitwise_left_shift(torch.ones_like(self.right), self.right) - 1
        self.half = torch.bitwise_right_shift(self.mask, 1)

    def view(self, *shape: int) -> Multiplier:
        out = copy.copy(self)
        for name in ("m0", "right", "left_mult", "mask", "half", "total", "round"):
            setattr(out, name, getattr(self, name).reshape(shape))
        return out

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x * M0 * 2^(shift - 31) in TFLite's integer arithmetic (int64 holding int32).

        Where the C code would overflow int32 (multipliers >= 1 only: the left shift of
        "double", the result of "single"), the value saturates: such values clamp to the
        int8 range afterwards either way."""
        if self.requantize == "single":  # |x * M0| < 2^62, + 2^61: no int64 overflow
            out = torch.bitwise_right_shift(x * self.m0 + self.round, self.total)
            return torch.clamp(out, INT32_MIN, INT32_MAX)
        if self.any_left:
            x = torch.clamp(x * self.left_mult, INT32_MIN, INT32_MAX)
        high = saturating_rounding_doubling_high_mul(x, self.m0, self.has_int32_min)
        # RoundingDivideByPOT: round half away from zero
        threshold = self.half + (high < 0).to(torch.int64)
        rounded_up = (torch.bitwise_and(high, self.mask) > threshold).to(torch.int64)
        return torch.bitwise_right_shift(high, self.right) + rounded_up


def multiply_by_quantized_multiplier(x: torch.Tensor, m0: torch.Tensor | int,
                                     shift: torch.Tensor | int,
                                     requantize: str = "double") -> torch.Tensor:
    """``MultiplyByQuantizedMultiplier``: x * M0 * 2^(shift - 31) in integer arithmetic,
    rounded twice ("double") or once ("single"); ``m0`` and ``shift`` broadcast against
    ``x`` (per-channel multipliers)."""
    return Multiplier(torch.as_tensor(m0), torch.as_tensor(shift), requantize)(x)


def rounding_divide(total: torch.Tensor, count: int) -> torch.Tensor:
    """total / count rounded half away from zero with C integer division, as TFLite's
    integer average pool: (total +- count / 2) / count."""
    half = count // 2
    nudged = torch.where(total > 0, total + half, total - half)
    return torch.div(nudged, count, rounding_mode="trunc")
