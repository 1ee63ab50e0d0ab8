"""The dense three (none, fp16, bf16) on their short path: against PyTorch's own casts, one
pass beyond the bare copy or casts (torch.profiler lists the ops), NaN/inf refused on
every path with the entry named (numpy finds it independently), a 16-bit sum that
overflows on finite values still sent, and a cast overflow refused where numpy's float16
cast gives inf."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from torch.profiler import ProfilerActivity, profile

import odtkit as odt
from odtkit.compress import Ctx

DENSE = ("none", "fp16", "bf16")
CAST = {"none": None, "fp16": torch.float16, "bf16": torch.bfloat16}
FAST = settings(max_examples=40, deadline=None, derandomize=True, database=None)
SCANS = {"aten::isfinite", "aten::isinf", "aten::isnan", "aten::abs", "aten::max", "aten::amax"}


def grad(shape=(16, 24), seed=0, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


def ops(fn) -> dict[str, int]:
    """aten ops that ran, with their call counts."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return {e.key: e.count for e in prof.key_averages() if e.key.startswith("aten::")}


def torch_round_trip(name: str, x: torch.Tensor) -> torch.Tensor:
    """What PyTorch itself gives: the tensor, or its cast there and back, in x's dtype."""
    return x.clone() if CAST[name] is None else x.to(CAST[name]).float().to(x.dtype)


INPUTS = {
    "float32": lambda: grad(),
    "requires_grad": lambda: grad().requires_grad_(),
    "float64": lambda: grad(dtype=torch.float64),
    "float16": lambda: grad(dtype=torch.float16),
    "transposed": lambda: grad((24, 16)).t(),
}


@pytest.mark.parametrize("name", DENSE)
@pytest.mark.parametrize("kind", INPUTS)
def test_round_trip_is_pytorchs_cast_in_the_callers_shape_and_dtype(name, kind):
    x = INPUTS[kind]()
    c = odt.compress.get(name)
    payload, ctx = c.compress(x, "w")
    y = c.decompress(payload, ctx)
    want = torch_round_trip(name, x.detach())
    assert y.shape == x.shape and y.dtype == x.dtype and torch.equal(y, want)
    assert len(payload) == 1 and payload[0].shape == (x.numel(),)
    assert payload[0].dtype == (x.dtype if CAST[name] is None else CAST[name])
    # the context is an ordinary frozen Ctx, equal to one the dataclass builds
    assert ctx == Ctx("w", tuple(x.shape), x.dtype, 0, {}) and ctx.numel == x.numel()
    with pytest.raises(dataclasses.FrozenInstanceError):
        ctx.step = 3
    assert dataclasses.replace(ctx, step=3).step == 3
    assert c.compress(x, "w")[1].step == 1 and c.compress(x, "b")[1].step == 0


@pytest.mark.parametrize("name", DENSE)
def test_both_paths_count_the_same_steps(name):
    """Short path (float32) and the base class's (requires grad, float64) share the per-name
    step counter: steps 0, 1, 2, 3 in call order, and state_dict counts the calls."""
    c = odt.compress.get(name)
    steps = [c.compress(INPUTS[kind](), "w")[1].step
             for kind in ("float32", "requires_grad", "float32", "float64")]
    assert steps == [0, 1, 2, 3] and c.state_dict()["steps"] == {"w": 4}


@pytest.mark.parametrize("name", DENSE)
def test_compress_runs_the_bare_ops_plus_one_sum(name):
    """The only pass over the data beyond PyTorch's own copy or cast is one sum: the ops
    and their counts are those of the bare payload followed by ``payload.sum().item()``
    (the flat view taken as ``ravel``, a view of a contiguous tensor)."""
    x, c = grad(), odt.compress.get(name)

    def bare():
        flat = x.ravel()
        sent = flat.clone() if CAST[name] is None else flat.to(CAST[name])
        sent.sum().item()

    c.compress(x, "w"), bare()  # warm
    ours = ops(lambda: c.compress(x, "w"))
    assert ours == ops(bare) and ours["aten::sum"] == 1 and not SCANS & set(ours), ours


@pytest.mark.parametrize("name", DENSE)
@pytest.mark.parametrize("kind", INPUTS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_entries_are_refused_on_every_path(name, kind, bad):
    x = INPUTS[kind]().detach()
    x[3, 5] = bad
    x.requires_grad_(kind == "requires_grad")
    where = int(np.flatnonzero(~np.isfinite(x.detach().double().numpy()))[0])
    c = odt.compress.get(name)
    with pytest.raises(ValueError, match=rf"'w' has 1 non-finite entries \(first: "
                                         rf"{bad} at flat index {where}\).*clip gradients"):
        c.compress(x, "w")
    assert c.compress(grad(), "w")[1].step == 0  # the refused call left no step behind


@pytest.mark.parametrize("name", DENSE)
def test_finite_values_whose_16_bit_sum_overflows_are_sent_without_a_scan(name):
    x = torch.full((40, 50), 60.0)  # 2000 x 60 = 120000: inf as a float16 sum
    x[0, :10] = -60000.0
    dtype = torch.float16 if name == "none" else torch.float32
    x = x.to(dtype)
    c = odt.compress.get(name)
    ran = ops(lambda: c.compress(x, "w"))
    assert "aten::isfinite" not in ran and "aten::isinf" not in ran
    assert torch.equal(c.decompress(*c.compress(x, "w")), torch_round_trip(name, x))


@FAST
@given(values=arrays(np.float32, st.integers(1, 300),
                     elements=st.floats(-7e4, 7e4, width=32)))
def test_fp16_refuses_exactly_where_numpys_cast_gives_inf(values):
    x = torch.from_numpy(values.copy())
    with np.errstate(over="ignore"):
        overflows = bool(np.isinf(values.astype(np.float16)).any())
    c = odt.compress.get("fp16")
    if overflows:
        with pytest.raises(ValueError, match="'g' has \\|value\\| .* above the fp16 maximum"
                                             ".*Scale the gradient down or use 'bf16'"):
            c.compress(x, "g")
        return
    y = c.decompress(*c.compress(x, "g"))
    assert np.array_equal(y.numpy(), values.astype(np.float16).astype(np.float32))


@FAST
@given(values=arrays(np.float32, st.integers(1, 300),
                     elements=st.floats(width=32, allow_nan=False, allow_infinity=False)))
def test_bf16_and_none_send_every_finite_float32(values):
    x = torch.from_numpy(values.copy())
    for name in ("none", "bf16"):
        c = odt.compress.get(name)
        try:
            y = c.decompress(*c.compress(x, "g"))
        except ValueError as err:  # bf16 rounds |v| near the float32 maximum up to inf
            assert name == "bf16" and "above the bf16 maximum" in str(err)
            assert bool(x.bfloat16().isinf().any())
            continue
        assert torch.equal(y, torch_round_trip(name, x))
