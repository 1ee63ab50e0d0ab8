"""The integer requantization of ``odtkit.quant._fixed_point`` against TFLite's C code written
out on Python integers ("double") and against exact rational arithmetic ("single")."""

from __future__ import annotations

import random
from fractions import Fraction

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from odtkit.quant._fixed_point import (
    INT32_MAX,
    INT32_MIN,
    Multiplier,
    multiply_by_quantized_multiplier,
    quantize_multiplier,
    rounding_divide,
)

FAST = settings(max_examples=60, deadline=None)
int32s = st.integers(INT32_MIN, INT32_MAX)
reals = st.floats(2.0**-30, 0.999, allow_nan=False)  # the multipliers of conv layers and adds


# ----------------------------------------------------------- the references

def c_div(a: int, b: int) -> int:
    """C integer division (truncates toward zero)."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b > 0) else -q


def tflite_mbqm(x: int, m0: int, shift: int) -> int:
    """MultiplyByQuantizedMultiplier as in tensorflow/lite/kernels/internal/common.h."""
    left, right = max(shift, 0), max(-shift, 0)
    a = x * (1 << left)
    if a == m0 == -(2**31):
        high = 2**31 - 1
    else:
        ab = a * m0
        high = c_div(ab + ((1 << 30) if ab >= 0 else 1 - (1 << 30)), 1 << 31)
    mask = (1 << right) - 1
    remainder = high & mask
    threshold = (mask >> 1) + (1 if high < 0 else 0)
    return (high >> right) + (1 if remainder > threshold else 0)


def exact_single(x: int, m0: int, shift: int) -> int:
    """x * M0 * 2^(shift - 31) rounded once, half up (toward +inf), in exact rationals:
    what one 64-bit rounding shift computes."""
    value = Fraction(x * m0, 2 ** (31 - shift))
    return (value + Fraction(1, 2)).__floor__()


def single(xs: list[int], m0: int, shift: int) -> list[int]:
    got = multiply_by_quantized_multiplier(torch.tensor(xs), torch.tensor(m0), torch.tensor(shift),
                                           "single")
    return got.tolist()


# ----------------------------------------------------------- quantize_multiplier

def test_quantize_multiplier_by_hand():
    assert quantize_multiplier(0.5) == (2**30, 0)
    assert quantize_multiplier(1.0) == (2**30, 1)
    assert quantize_multiplier(0.375) == (1610612736, -1)       # 0.75 * 2^31, shift -1
    assert quantize_multiplier(0.0) == (0, 0)
    assert quantize_multiplier(2.0**-40) == (0, 0)              # flushed to zero
    rng = random.Random(0)
    for _ in range(200):
        real = rng.uniform(1e-6, 0.99)
        m0, shift = quantize_multiplier(real)
        assert 2**30 <= m0 < 2**31
        assert abs(m0 * 2.0 ** (shift - 31) - real) <= 2.0 ** (shift - 32)
    with pytest.raises(ValueError, match="multiplier must be finite"):
        quantize_multiplier(float("nan"))


# ----------------------------------------------------------- "double": TFLite's default

def test_multiply_by_quantized_multiplier_by_hand():
    m_half, m_quarter, m_3_8 = (quantize_multiplier(v) for v in (0.5, 0.25, 0.375))
    cases = [(5, m_3_8, 2),       # 1.875 -> 2
             (3, m_half, 2),      # 1.5 -> 2
             (-3, m_half, -1),    # -1.5 -> -1: the high multiply rounds half up
             (-6, m_quarter, -2),  # -1.5 -> -2: the rounding shift rounds half away from 0
             (1000, m_3_8, 375)]
    for x, (m0, shift), want in cases:
        got = multiply_by_quantized_multiplier(torch.tensor([x]), torch.tensor(m0), torch.tensor(shift))
        assert int(got) == want == tflite_mbqm(x, m0, shift), (x, m0, shift)


def test_multiply_by_quantized_multiplier_matches_the_c_code():
    rng = random.Random(1)
    xs = [0, 1, -1, 2**31 - 1, -(2**31), 12345, -12345] + [
        rng.randint(-(2**31), 2**31 - 1) for _ in range(300)] + [
        rng.randint(-(2**20), 2**20) for _ in range(300)]
    for real in (0.5, 0.375, 1e-4, 3.7e-3, 0.999, 2.0**-20, 1.5, 7.25):
        m0, shift = quantize_multiplier(real)
        got = multiply_by_quantized_multiplier(torch.tensor(xs), torch.tensor(m0), torch.tensor(shift))
        want = [tflite_mbqm(x, m0, shift) if shift <= 0 or abs(x << shift) < 2**31 else None
                for x in xs]
        pairs = [(int(g), w) for g, w in zip(got, want, strict=True) if w is not None]
        assert [g for g, _ in pairs] == [w for _, w in pairs], real


# ----------------------------------------------------------- "single": one rounding

def test_single_rounding_by_hand():
    """Half-integers round up (toward +inf), negative ones too, where "double" sends -1.5
    at M = 1/4 to -2; everything else to the nearest integer."""
    m_half, m_quarter, m_3_8 = (quantize_multiplier(v) for v in (0.5, 0.25, 0.375))
    cases = [(5, m_3_8, 2),       # 1.875 -> 2
             (3, m_half, 2),      # 1.5 -> 2
             (-3, m_half, -1),    # -1.5 -> -1
             (-5, m_half, -2),    # -2.5 -> -2
             (-6, m_quarter, -1),  # -1.5 -> -1 ("double": -2)
             (-7, m_quarter, -2),  # -1.75 -> -2
             (-5, m_3_8, -2),     # -1.875 -> -2
             (4, m_3_8, 2), (-4, m_3_8, -1),      # 3x/8 = +-1.5
             (20, m_3_8, 8), (-20, m_3_8, -7),    # +-7.5
             (1000, m_3_8, 375), (0, m_3_8, 0)]
    for x, (m0, shift), want in cases:
        assert single([x], m0, shift) == [want] == [exact_single(x, m0, shift)], (x, m0, shift)
    m0, shift = m_quarter
    assert multiply_by_quantized_multiplier(torch.tensor([-6]), m0, shift).tolist() == [-2]


@FAST
@given(st.lists(int32s, min_size=1, max_size=20), reals)
def test_single_rounding_is_the_exact_product_rounded_once(xs, real):
    m0, shift = quantize_multiplier(real)
    got = single(xs, m0, shift)
    assert got == [exact_single(x, m0, shift) for x in xs]
    for x, g in zip(xs, got, strict=True):   # within half a unit of x * M0 * 2^(shift - 31)
        assert abs(Fraction(g) - Fraction(x * m0, 2 ** (31 - shift))) <= Fraction(1, 2)


@FAST
@given(st.integers(-(2**19), 2**19), st.integers(-10, 0))
def test_single_rounding_sends_every_tie_up(k, shift):
    """M = 2^(shift - 1) (M0 = 2^30): x = (2k + 1) 2^-shift lands on k + 1/2 exactly."""
    x = (2 * k + 1) * 2 ** (-shift)
    assert single([x], 2**30, shift) == [k + 1]


@FAST
@given(st.lists(int32s, min_size=1, max_size=20), reals)
def test_the_two_roundings_differ_by_at_most_one(xs, real):
    m0, shift = quantize_multiplier(real)
    double = multiply_by_quantized_multiplier(torch.tensor(xs), m0, shift, "double").tolist()
    assert all(abs(s - d) <= 1 for s, d in zip(single(xs, m0, shift), double, strict=True))


def test_single_rounding_with_multipliers_of_one_or_more_saturates():
    for real in (1.0, 1.5, 7.25, 2.0**20):
        m0, shift = quantize_multiplier(real)
        xs = [0, 1, -1, 3, -3, 12345, -12345, 2**30, -(2**30), INT32_MAX, INT32_MIN]
        want = [min(INT32_MAX, max(INT32_MIN, exact_single(x, m0, shift))) for x in xs]
        assert single(xs, m0, shift) == want, real


def test_per_channel_multipliers_broadcast():
    reals = (0.3, 1e-3, 0.75, 2.0**-12)
    pairs = [quantize_multiplier(r) for r in reals]
    x = torch.randint(-(2**24), 2**24, (5, len(reals), 3), generator=torch.Generator().manual_seed(0))
    for requantize in ("single", "double"):
        m = Multiplier(torch.tensor([p[0] for p in pairs]), torch.tensor([p[1] for p in pairs]),
                       requantize).view(1, -1, 1)
        got = m(x)
        for c, (m0, shift) in enumerate(pairs):
            want = multiply_by_quantized_multiplier(x[:, c], m0, shift, requantize)
            assert torch.equal(got[:, c], want), (requantize, c)


def test_an_unknown_rounding_is_refused():
    with pytest.raises(ValueError, match=r"requantize must be one of \('single', 'double'\)"):
        multiply_by_quantized_multiplier(torch.tensor([1]), 2**30, 0, "nearest")


# ----------------------------------------------------------- average pool


def test_rounding_divide_is_tflites_pool_rounding():
    totals = torch.tensor([7, -7, 5, -6, 6, 0, -1, 1])
    assert rounding_divide(totals, 2).tolist() == [4, -4, 3, -3, 3, 0, -1, 1]  # 2.5 -> 3
    assert rounding_divide(totals, 4).tolist() == [2, -2, 1, -2, 2, 0, 0, 0]   # -1.5 -> -2
