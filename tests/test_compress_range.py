"""Every compressor on huge finite gradients: decompress(compress(g)) is finite, or compress
refuses with a clear error exactly where the true result cannot be float32, as computed
independently here in float64 with numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes, arrays

import odtkit as odt
from odtkit.compress import PowerSGD

NAMES = odt.compress.names()
FP32_MAX = float(np.finfo(np.float32).max)
BF16_MAX = float(torch.finfo(torch.bfloat16).max)
HUGE = (1e20, 3e38, -3e38)


def make(name: str):
    return odt.compress.get(name, **({"rank_too_large": "dense"} if name == "powersgd" else {}))


def may_refuse(name: str, x: torch.Tensor) -> bool:
    """True where the exact decoded values need more than float32 (or the cast's) range."""
    a = x.detach().double().numpy().reshape(-1)
    if name == "fp16":
        return np.abs(a).max() > 65504.0
    if name == "bf16":
        return np.abs(a).max() > BF16_MAX
    if name == "qsgd":  # levels are multiples of the bucket norm (512 entries a bucket)
        padded = np.concatenate([a, np.zeros(-a.size % 512)]).reshape(-1, 512)
        return np.sqrt((padded**2).sum(1)).max() > FP32_MAX * (1 - 1e-6)
    if name == "powersgd" and x.dim() >= 2:  # Q and P Q^T are bounded by column norms
        matrix = a.reshape(x.shape[0], -1)
        return np.sqrt((matrix**2).sum(0)).max() > 0.99 * FP32_MAX
    return False


def roundtrip_or_refusal(name: str, x: torch.Tensor, calls: int = 1) -> str:
    """'finite' after ``calls`` round trips on one fresh compressor, or 'refused'; fails
    on a non-finite result or on a refusal the float64 reference does not allow."""
    c = make(name)
    try:
        for _ in range(calls):
            y = c.decompress(*c.compress(x, "fc.weight"))
            assert y.shape == x.shape and bool(y.isfinite().all()), (name, y)
    except ValueError as err:
        assert may_refuse(name, x), f"{name} refused a representable result: {err}"
        message = str(err)
        assert "'fc.weight'" in message and "maximum" in message, message
        return "refused"
    return "finite"


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("value", HUGE)
def test_one_huge_entry_decodes_finite(name, value):
    x = torch.randn(16, 16, generator=torch.Generator().manual_seed(0))
    x[3, 4] = value
    for t in (x, torch.tensor([value])):
        outcome = roundtrip_or_refusal(name, t)
        assert outcome == ("refused" if name == "fp16" else "finite"), (name, t.shape)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("value", HUGE)
def test_a_tensor_full_of_huge_values_decodes_finite_or_is_refused(name, value):
    x = torch.full((16, 16), value)
    outcome = roundtrip_or_refusal(name, x)
    inherent = name == "fp16" or (abs(value) > 1e38 and name in ("qsgd", "powersgd"))
    assert outcome == ("refused" if inherent else "finite"), name


def test_huge_values_decode_to_the_right_magnitude():
    x = torch.tensor([1e20, -3e38, 0.0, 2.0])
    c = odt.compress.get("qsgd", bucket_size=1)  # |v| / norm = 1: every level is s
    torch.testing.assert_close(c.decompress(*c.compress(x, "w")), x)
    y = odt.compress.get("signsgd", scale="mean")
    sent = y.decompress(*y.compress(x, "w"))
    torch.testing.assert_close(sent, torch.tensor([1.0, -1.0, 1.0, 1.0]) * (3e38 + 1e20 + 2) / 4)
    t = odt.compress.get("terngrad")
    assert t.decompress(*t.compress(x, "w"))[1] == -3e38  # the max entry is kept surely


def test_powersgd_warm_start_with_1e20_stays_finite():
    """The warm-started Q grows like the gradient: M Q was ~1e40 on the second call. Scaled
    by 2**66 (~7e19), every call decodes to 2**66 times the unscaled one."""
    base = torch.randn(16, 12, generator=torch.Generator().manual_seed(1))
    big, small = PowerSGD(rank=2), PowerSGD(rank=2)
    for _ in range(3):
        y = big.decompress(*big.compress(base * 2.0**66, "w"))
        want = small.decompress(*small.compress(base, "w"))
        assert bool(y.isfinite().all())
        torch.testing.assert_close(y.double() / 2.0**66, want.double(), rtol=1e-6, atol=0)


def test_float16_tensor_that_would_decode_above_65504_is_refused():
    # bucket norm 480,000, one level: each entry decodes to 0 or 480,000 (p = 1/8)
    x = torch.full((64,), 60000.0, dtype=torch.float16)
    with pytest.raises(ValueError, match=r"'g' \(torch.float16\) would decode to .*65504"):
        odt.compress.get("qsgd", levels=1).compress(x, "g")
    y = odt.compress.get("qsgd", bucket_size=1)  # one entry a bucket: norm 60000 fits
    assert bool(y.decompress(*y.compress(x, "g")).isfinite().all())


def test_float64_values_beyond_float32_are_refused():
    x = torch.tensor([1e300, 1.0], dtype=torch.float64)
    with pytest.raises(ValueError, match="'g' has \\|value\\| 1e\\+300 above the float32 max"):
        odt.compress.get("topk", k=1).compress(x, "g")


def test_accumulators_that_overflow_are_refused_clearly():
    x = torch.full((4,), 3e38)
    ef = odt.compress.get("signsgd", scale="mean", error_feedback=True)
    ef.compress(torch.tensor([3e38, -3e38, 0.0, 0.0]), "w")  # residual +-1.5e38 on 0 and 1
    with pytest.raises(ValueError, match="residual of 'w' overflowed float32"):
        ef.compress(torch.tensor([3e38, -3e38, 0.0, 0.0]), "w")
    dgc = odt.compress.get("dgc", density=0.25, warmup=False, momentum_correction=False)
    dgc.compress(x, "w")  # sends one entry, keeps three at 3e38
    with pytest.raises(ValueError, match="accumulated gradient of 'w' overflowed float32"):
        dgc.compress(x, "w")


def finite_tensors():
    """float32 tensors over the whole finite range, huge values and zeros likely."""
    elements = st.one_of(st.floats(width=32, allow_nan=False, allow_infinity=False),
                         st.sampled_from([1e20, -1e20, 3e38, -3e38, FP32_MAX, 0.0, 1.0]))
    return arrays(np.float32, array_shapes(min_dims=1, max_dims=2, max_side=9),
                  elements=elements).map(torch.from_numpy)


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=25, deadline=None, derandomize=True, database=None)
@given(x=finite_tensors())
def test_every_finite_gradient_decodes_finite_or_is_refused_with_reason(name, x):
    roundtrip_or_refusal(name, x, calls=1 if name in ("dgc", "ef-signsgd") else 2)
