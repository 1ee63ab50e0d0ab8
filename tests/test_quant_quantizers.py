"""Quantizers against PyTorch's own: fake-quantize ops, observers' qparams, quantize_per_*."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.ao.quantization import MinMaxObserver, PerChannelMinMaxObserver

from odtkit.quant import QTensor, dequantize, fake_quantize, quantize
from odtkit.quant.quantizers import _FakeQuantize, qrange

BITS = (2, 3, 4, 8, 12, 16)
FAST = settings(max_examples=30, deadline=None)


def _torch_observer(bits: int, symmetric: bool, axis: int | None):
    """PyTorch's observer set up for the same integer range as ``quantize``."""
    qmin, qmax = (-(2 ** (bits - 1)) + 1 if symmetric else -(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    dtype = torch.qint8 if bits <= 8 else torch.qint32
    if axis is None:
        scheme = torch.per_tensor_symmetric if symmetric else torch.per_tensor_affine
        return MinMaxObserver(dtype=dtype, qscheme=scheme, quant_min=qmin, quant_max=qmax)
    scheme = torch.per_channel_symmetric if symmetric else torch.per_channel_affine
    return PerChannelMinMaxObserver(ch_axis=axis, dtype=dtype, qscheme=scheme,
                                    quant_min=qmin, quant_max=qmax)


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("axis", [None, 0, 2])
def test_quantize_matches_pytorch_observer_and_fake_quantize(bits, symmetric, axis):
    x = torch.randn(5, 4, 6, generator=torch.Generator().manual_seed(bits)) * 3 + 0.5
    q = quantize(x, bits=bits, symmetric=symmetric, axis=axis)
    observer = _torch_observer(bits, symmetric, axis)
    observer(x)
    scale, zero_point = observer.calculate_qparams()
    shape = () if axis is None else (x.shape[axis],)
    assert torch.equal(q.scale, scale.reshape(shape))
    assert torch.equal(q.zero_point, zero_point.to(torch.int32).reshape(shape))
    assert (q.qmin, q.qmax) == (observer.quant_min, observer.quant_max)
    if axis is None:
        ref = torch.fake_quantize_per_tensor_affine(x, float(scale), int(zero_point),
                                                    q.qmin, q.qmax)
    else:
        ref = torch.fake_quantize_per_channel_affine(x, scale, zero_point.to(torch.int32), axis,
                                                     q.qmin, q.qmax)
    assert torch.equal(dequantize(q), ref)
    assert torch.equal(fake_quantize(x, q.scale, q.zero_point, q.qmin, q.qmax, axis=axis), ref)


@pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor:UserWarning")
@pytest.mark.parametrize("axis", [None, 1])
def test_integers_match_torch_quantize_per_tensor_and_channel(axis):
    x = torch.randn(8, 5, generator=torch.Generator().manual_seed(1))
    q = quantize(x, bits=8, symmetric=False, axis=axis)
    if axis is None:
        ref = torch.quantize_per_tensor(x, float(q.scale), int(q.zero_point), torch.qint8)
    else:
        ref = torch.quantize_per_channel(x, q.scale.double(), q.zero_point.long(), axis,
                                         torch.qint8)
    assert torch.equal(q.values, ref.int_repr())


def test_hand_computed_example_rounds_half_to_even():
    # scale 2^-4 is exact: max|x| = 127 / 16; 0.03125 is half a step, 0.09375 one and a half
    x = torch.tensor([127 / 16, -127 / 16, 0.03125, 0.09375, -0.09375, 1.0])
    q = quantize(x, bits=8)
    assert float(q.scale) == 0.0625 and int(q.zero_point) == 0
    assert q.values.tolist() == [127, -127, 0, 2, -2, 16]
    # asymmetric: [-2, 13.9375] spans 255 steps of 2^-4; zero point -128 + 32 = -96
    x = torch.tensor([-2.0, 0.0, 13.9375, 0.03125, 0.09375])
    q = quantize(x, bits=8, symmetric=False)
    assert (float(q.scale), int(q.zero_point)) == (0.0625, -96)
    assert q.values.tolist() == [-128, -96, 127, -96, -94]


@pytest.mark.parametrize("bits,symmetric,expected", [
    (8, True, (-127, 127)), (8, False, (-128, 127)), (2, True, (-1, 1)), (2, False, (-2, 1)),
    (16, False, (-32768, 32767)), (4, True, (-7, 7)),
])
def test_ranges_and_storage(bits, symmetric, expected):
    q = quantize(torch.randn(3, 3), bits=bits, symmetric=symmetric)
    assert (q.qmin, q.qmax) == expected == qrange(bits, symmetric)
    assert q.values.dtype == (torch.int8 if bits <= 8 else torch.int16)
    assert q.scale.dtype == torch.float32 and q.zero_point.dtype == torch.int32
    with pytest.raises(dataclasses.FrozenInstanceError):
        q.bits = 4  # type: ignore[misc]


def test_explicit_scale_and_zero_point_as_given():
    x = torch.tensor([-1.0, 0.0, 0.26, 5.0])
    q = quantize(x, bits=4, symmetric=False, scale=0.25, zero_point=-3)
    # round(x / 0.25) - 3 = [-7, -3, -2, 17 -> clamped to 7]
    assert q.values.tolist() == [-7, -3, -2, 7]
    assert float(q.scale) == 0.25 and int(q.zero_point) == -3
    q = quantize(torch.ones(2, 3), axis=1, scale=torch.tensor([0.5, 0.25, 1.0]))
    assert q.values.tolist() == [[2, 4, 1]] * 2


def test_all_zero_tensor_gets_the_smallest_scale_and_zeros():
    q = quantize(torch.zeros(4), bits=8, symmetric=False)
    assert float(q.scale) == torch.finfo(torch.float32).eps
    assert torch.equal(q.dequantize(), torch.zeros(4))


arrays = st.lists(st.floats(-1e3, 1e3, allow_nan=False, width=32), min_size=2, max_size=24)


@FAST
@given(arrays, st.sampled_from(BITS), st.booleans(), st.sampled_from([None, 0, 1]))
def test_round_trip_error_at_most_half_a_step(values, bits, symmetric, axis):
    x = torch.tensor(values, dtype=torch.float32).reshape(1, -1)          # (1, N)
    q = quantize(x, bits=bits, symmetric=symmetric, axis=axis)
    step = q.scale.double()
    if axis is not None:
        step = step.reshape([-1, 1] if axis == 0 else [1, -1])
    err = (q.dequantize().double() - x.double()).abs()
    # half a step, plus float32 rounding (relative 2^-23) of the scale, x / scale and q * scale
    slack = 1e-6 * (x.double().abs().max() + step)
    assert bool((err <= step * 0.5 + slack).all()), (err / step).max()
    assert int(q.values.min()) >= q.qmin and int(q.values.max()) <= q.qmax


@FAST
@given(arrays, st.sampled_from(BITS), st.floats(1e-3, 10.0), st.sampled_from(["nearest", "stochastic"]))
def test_values_stay_inside_the_bit_range(values, bits, scale, rounding):
    x = torch.tensor(values, dtype=torch.float32)
    q = quantize(x, bits=bits, symmetric=False, scale=scale, zero_point=0, rounding=rounding,
                 generator=torch.Generator().manual_seed(0))
    assert q.qmin <= int(q.values.min()) and int(q.values.max()) <= q.qmax


@settings(max_examples=15, deadline=None)
@given(st.lists(st.floats(-50, 50, allow_nan=False, width=32), min_size=1, max_size=8),
       st.floats(0.05, 2.0), st.integers(0, 2**31 - 1))
def test_stochastic_rounding_is_unbiased(values, scale, seed):
    draws = 4000
    x = torch.tensor(values, dtype=torch.float32).expand(draws, -1).contiguous()
    q = quantize(x, bits=16, symmetric=False, scale=scale, zero_point=0, rounding="stochastic",
                 generator=torch.Generator().manual_seed(seed))
    # t = x * (1 / s) in float32, as PyTorch's fake-quantize computes x / s
    target = (x[0] * torch.reciprocal(torch.tensor(scale, dtype=torch.float32))).double()
    mean = q.values.double().mean(dim=0)
    # each draw is floor(t) + Bernoulli(frac(t)): variance frac (1 - frac) <= 1/4; floored at
    # one draw in `draws` so float32 rounding of t + u at an integer t cannot fail the test
    frac = target - torch.floor(target)
    variance = torch.clamp(frac * (1 - frac), min=1 / draws)
    standard_error = torch.sqrt(variance / draws)
    assert bool(((mean - target).abs() <= 5 * standard_error).all())
    # and every draw is one of the two neighbours
    assert bool(((q.values.double() - torch.floor(target)).abs() <= 1).all())


def test_stochastic_rounding_is_floor_of_x_over_s_plus_uniform():
    x = torch.tensor([0.1, 0.35, -0.7, 2.0])
    q = quantize(x, bits=8, symmetric=True, scale=0.25, rounding="stochastic",
                 generator=torch.Generator().manual_seed(3))
    u = torch.rand(4, generator=torch.Generator().manual_seed(3))
    assert q.values.tolist() == torch.floor(x * 4 + u).to(torch.int8).tolist()


def test_straight_through_gradient_at_the_clamp_boundaries():
    # scale 0.5, zero point 0, range [-4, 3]: x / s = -4, -4.5 (ties to -4), -4.52, -5,
    # 3, 3.5 (ties to 4), 3.48; inside iff the rounded value is in [-4, 3]
    x = torch.tensor([-2.0, -2.25, -2.26, -2.5, 1.5, 1.75, 1.74])
    expected = torch.tensor([1.0, 1.0, 0.0, 0.0, 1.0, 0.0, 1.0])
    for engine in ("torch", "autograd"):
        xg = x.clone().requires_grad_()
        if engine == "torch":
            y = fake_quantize(xg, 0.5, 0, -4, 3)
        else:
            y = _FakeQuantize.apply(xg, torch.tensor(0.5), torch.tensor(0, dtype=torch.int32),
                                    -4, 3, None, "nearest", None)
        (y * torch.arange(1.0, 8.0)).sum().backward()
        assert torch.equal(xg.grad, expected * torch.arange(1.0, 8.0)), engine
        assert y.tolist() == [-2.0, -2.0, -2.0, -2.0, 1.5, 1.5, 1.5]


@FAST
@given(st.sampled_from(BITS), st.booleans(), st.sampled_from([None, 1]), st.integers(0, 1000))
def test_own_autograd_function_equals_pytorch_ops(bits, symmetric, axis, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 4, 5, generator=g) * 4
    q = quantize(x * 0.5, bits=bits, symmetric=symmetric, axis=axis)   # x overflows the range
    qmin, qmax = q.qmin, q.qmax
    a = x.clone().requires_grad_()
    b = x.clone().requires_grad_()
    ours = _FakeQuantize.apply(a, q.scale, q.zero_point, qmin, qmax, axis, "nearest", None)
    theirs = fake_quantize(b, q.scale, q.zero_point, qmin, qmax, axis=axis)
    weights = torch.randn(x.shape, generator=g)
    (ours * weights).sum().backward()
    (theirs * weights).sum().backward()
    assert torch.equal(ours, theirs) and torch.equal(a.grad, b.grad)
    assert bool((a.grad == 0).any())          # the clamp was reached somewhere


def test_stochastic_fake_quantize_has_the_same_gradient_rule():
    x = torch.tensor([-3.0, -0.3, 0.2, 3.0], requires_grad=True)
    y = fake_quantize(x, 0.5, 0, -2, 1, rounding="stochastic",
                      generator=torch.Generator().manual_seed(0))
    y.sum().backward()
    # x / s = -6, -0.6, 0.4, 6: the ends fall outside [-2, 1] whatever u is
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 0.0]
    assert y[0].item() == -1.0 and y[3].item() == 0.5


def test_fake_quantize_keeps_dtype_and_works_at_16_bits():
    x = torch.randn(10, dtype=torch.float64)
    y = fake_quantize(x, 1e-3, 5, -32768, 32767)
    assert y.dtype == torch.float64
    assert torch.equal(y, torch.fake_quantize_per_tensor_affine(x, 1e-3, 5, -32768, 32767))


@pytest.mark.parametrize("call,error,words", [
    (lambda: quantize(torch.randn(3), bits=1), ValueError, ["bits=1", "[2, 16]"]),
    (lambda: quantize(torch.randn(3), bits=17), ValueError, ["bits=17", "[2, 16]"]),
    (lambda: quantize(torch.randn(3), bits=8.0), TypeError, ["bits=8.0", "integer"]),
    (lambda: quantize(torch.randn(3, 2), axis=2), ValueError, ["axis=2", "(3, 2)", "[-2, 1]"]),
    (lambda: quantize(torch.randn(3), rounding="nearst"), ValueError,
     ["'nearst'", "Did you mean 'nearest'", "stochastic"]),
    (lambda: quantize(torch.tensor([1.0, math.nan])), ValueError, ["1 non-finite", "finite"]),
    (lambda: quantize(torch.tensor([1.0, math.inf])), ValueError, ["non-finite"]),
    (lambda: quantize(torch.arange(3)), TypeError, ["torch.int64", ".float()"]),
    (lambda: quantize(torch.randn(3), scale=0.0), ValueError, ["scale=0.0", "> 0"]),
    (lambda: quantize(torch.randn(3), scale=-1.0), ValueError, ["scale=-1.0", "> 0"]),
    (lambda: quantize(torch.randn(3), scale=math.nan), ValueError, ["scale=nan", "finite"]),
    (lambda: quantize(torch.randn(3), symmetric=False, scale=0.1), ValueError, ["zero_point"]),
    (lambda: quantize(torch.randn(3), scale=0.1, zero_point=3), ValueError,
     ["got 3", "symmetric=False"]),
    (lambda: quantize(torch.randn(3), zero_point=0), ValueError, ["without scale"]),
    (lambda: quantize(torch.randn(3), symmetric=False, scale=0.1, zero_point=200), ValueError,
     ["[-128, 127]", "zero_point=200"]),
    (lambda: quantize(torch.randn(3, 2), axis=1, scale=torch.ones(3)), ValueError,
     ["(3,)", "(2,)"]),
    (lambda: fake_quantize(torch.randn(3), 0.1, 0, 5, 5), ValueError, ["qmax=5", ">= 6"]),
    (lambda: fake_quantize(torch.randn(3), 0.1, 0.5, -8, 7), ValueError, ["0.5", "integer"]),
    (lambda: dequantize(torch.ones(2)), TypeError, ["QTensor", "Tensor"]),
])
def test_bad_input_names_the_value_and_the_fix(call, error, words):
    with pytest.raises(error) as info:
        call()
    for word in words:
        assert word in str(info.value), (word, str(info.value))


def test_qtensor_refuses_inconsistent_parts():
    ok = dict(values=torch.zeros(2, 3, dtype=torch.int8), scale=torch.ones(3),
              zero_point=torch.zeros(3, dtype=torch.int32), bits=8, symmetric=True, axis=1)
    QTensor(**ok)
    with pytest.raises(TypeError, match="torch.int8 for bits=8"):
        QTensor(**{**ok, "values": torch.zeros(2, 3, dtype=torch.int32)})
    with pytest.raises(ValueError, match=r"scale must be torch.float32 of shape \(3,\)"):
        QTensor(**{**ok, "scale": torch.ones(2)})
    with pytest.raises(ValueError, match="zero_point 0"):
        QTensor(**{**ok, "zero_point": torch.ones(3, dtype=torch.int32)})
    assert QTensor(**{**ok, "axis": -1}).axis == 1
