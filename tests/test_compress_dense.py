"""The dense three (none, fp16, bf16): against PyTorch's own casts bit for bit, no pass
beyond the bare copy and the bare cast with odtkit's compiled ops (one sum more with
torch's ops alone; torch.profiler lists the ops), NaN and inf of the input sent as
PyTorch sends them on every path, a 16-bit sum that overflows on finite values still
sent, and a cast that turns a finite entry into inf refused (where numpy's float16 cast
gives inf), with the tensor, the value and the fix named.

Every test runs twice: on the compiled ops (flat_copy, cast_checked, uncast) and on
torch's ops alone, the fallback where they are not built."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from _native import native_or_skip
from _net import free_port
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from torch.profiler import ProfilerActivity, profile

import odtkit as odt
from odtkit.compress import Ctx, cast

DENSE = ("none", "fp16", "bf16")
CAST = {"none": None, "fp16": torch.float16, "bf16": torch.bfloat16}
FAST = settings(max_examples=40, deadline=None, derandomize=True, database=None)
SCANS = {"aten::isfinite", "aten::isinf", "aten::isnan", "aten::abs", "aten::max", "aten::amax"}


@pytest.fixture(scope="module", autouse=True, params=["compiled", "torch"])
def dense_ops(request):
    """Which ops the dense codecs run: odtkit's compiled ones, or torch's alone."""
    if request.param == "compiled":
        native_or_skip()
        assert cast._kernel() is not None
        yield request.param
        return
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cast, "_kernel", lambda: None)
        yield request.param


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
    "neg_view": lambda: torch._neg_view(-grad()),  # values are minus the bytes in memory
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
@pytest.mark.parametrize(("bad", "error", "message"), [
    ([1.0, 2.0], TypeError, "'w' must be a torch.Tensor, got list"),
    (torch.zeros(3, 0), ValueError, r"'w' is empty \(shape \(3, 0\)\); nothing to send"),
    (torch.ones(3, dtype=torch.int32), ValueError, "'w' has dtype torch.int32"),
])
def test_bad_input_is_refused_before_anything_is_sent(name, bad, error, message):
    c = odt.compress.get(name)
    with pytest.raises(error, match=message):
        c.compress(bad, "w")
    assert c.state_dict()["steps"] == {}


@pytest.mark.parametrize("name", DENSE)
def test_both_paths_count_the_same_steps(name):
    """Short path (float32) and the base class's (requires grad, float64) share the per-name
    step counter: steps 0, 1, 2, 3 in call order, and state_dict counts the calls."""
    c = odt.compress.get(name)
    steps = [c.compress(INPUTS[kind](), "w")[1].step
             for kind in ("float32", "requires_grad", "float32", "float64")]
    assert steps == [0, 1, 2, 3] and c.state_dict()["steps"] == {"w": 4}


@pytest.mark.parametrize("name", DENSE)
def test_compress_runs_the_bare_ops_plus_one_sum_for_a_cast_on_torchs_ops(name, dense_ops):
    """On torch's ops 'none' runs PyTorch's flat view and copy and nothing else; a cast runs
    the flat view, the cast and one sum of the payload (``payload.sum().item()``), no scan.
    On the compiled ops each makes its output tensor (aten::empty) and nothing else: the
    copy, the cast and its check run inside one call."""
    x, c = grad(), odt.compress.get(name)

    def bare():
        flat = x.ravel()
        if CAST[name] is None:
            flat.clone()
        else:
            flat.to(CAST[name]).sum().item()

    c.compress(x, "w"), bare()  # warm
    ours = ops(lambda: c.compress(x, "w"))
    if dense_ops == "compiled":
        assert ours == {"aten::empty": 1}, ours
        payload, ctx = c.compress(x, "w")
        if CAST[name] is not None:  # the receiver's widening: one output tensor too
            assert ops(lambda: c.decompress(payload, ctx)) == {"aten::empty": 1}
        return
    assert ours == ops(bare) and not SCANS & set(ours), ours
    assert ours.get("aten::sum", 0) == (0 if CAST[name] is None else 1), ours


def same_bits(y: torch.Tensor, want: torch.Tensor) -> bool:
    """Equal dtype, shape and bits, NaN included (``torch.equal`` calls -0.0 == 0.0)."""
    ints = {8: torch.int64, 4: torch.int32, 2: torch.int16}
    return (y.dtype == want.dtype and y.shape == want.shape
            and torch.equal(y.contiguous().view(ints[y.element_size()]),
                            want.contiguous().view(ints[want.element_size()])))


@pytest.mark.parametrize("name", DENSE)
@pytest.mark.parametrize("kind", INPUTS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_entries_travel_as_pytorch_sends_them_on_every_path(name, kind, bad):
    """No refusal: the payload holds the entry as PyTorch's own copy or cast does (found
    independently by numpy at its flat index), and the round trip is PyTorch's."""
    x = INPUTS[kind]().detach()
    x[3, 5] = bad
    x[0, 0] = -x[0, 0]  # more than one value changed: not only the bad entry is checked
    x.requires_grad_(kind == "requires_grad")
    plain = x.detach()
    where = int(np.flatnonzero(~np.isfinite(plain.double().numpy()))[0])
    c = odt.compress.get(name)
    payload, ctx = c.compress(x, "w")
    sent = float(payload[0][where])
    assert math.isnan(sent) if math.isnan(bad) else sent == bad
    y = c.decompress(payload, ctx)
    assert y.dtype == x.dtype and y.shape == x.shape
    torch.testing.assert_close(y, torch_round_trip(name, plain), rtol=0, atol=0,
                               equal_nan=True)
    assert ctx.step == 0 and c.compress(grad(), "w")[1].step == 1


@pytest.mark.parametrize("name", ["fp16", "bf16"])
def test_casts_match_pytorchs_own_compress_hooks_on_non_finite_input(name):
    """PyTorch's fp16/bf16 DDP hooks, on one gloo rank: cast the bucket, all-reduce it, cast
    back. Ours gives the same bits, NaN and inf included."""
    import torch.distributed as dist
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

    x = grad((8, 16))
    x[1, 2], x[3, 4], x[5, 6] = float("nan"), float("inf"), -float("inf")
    hook = {"fp16": default_hooks.fp16_compress_hook,
            "bf16": default_hooks.bf16_compress_hook}[name]
    port = free_port()
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0,
                            world_size=1)
    try:
        bucket = FakeBucket(x.reshape(-1).clone())
        theirs = hook(None, bucket).wait()
    finally:
        dist.destroy_process_group()
    c = odt.compress.get(name)
    ours = c.decompress(*c.compress(x, "w")).reshape(-1)
    assert same_bits(ours, theirs)


class FakeBucket:
    """What PyTorch's default hooks read of a GradBucket: its flat buffer."""

    def __init__(self, buffer: torch.Tensor) -> None:
        self._buffer = buffer

    def buffer(self) -> torch.Tensor:
        return self._buffer


OVERFLOW_INPUTS = {k: v for k, v in INPUTS.items() if k != "float16"}


@pytest.mark.parametrize("kind", OVERFLOW_INPUTS)
@pytest.mark.parametrize("company", ["finite", "nan", "inf"])
def test_fp16_refuses_a_finite_entry_its_cast_turns_into_inf_on_every_path(kind, company):
    """Refused whatever else the tensor holds: the message names the tensor, the value that
    overflowed (not an inf that came with the input) and the fix; no step is counted."""
    x = INPUTS[kind]().detach()
    x[2, 3] = -70000.0  # above 65504: float16 rounds it to -inf
    if company != "finite":
        x[4, 1] = float(company)
    x.requires_grad_(kind == "requires_grad")
    c = odt.compress.get("fp16")
    with pytest.raises(ValueError, match=r"tensor 'w' has \|value\| 7e\+04 above the fp16 "
                                         r"maximum 6\.55e\+04: the cast would give inf\. "
                                         r"Scale the gradient down or use 'bf16'"):
        c.compress(x, "w")
    assert c.compress(grad(), "w")[1].step == 0  # the refused call left no step behind


def test_fp16_overflow_boundary_is_where_pytorchs_cast_gives_inf():
    """65504 and 65519.99 round to 65504 and are sent; 65520 rounds to inf and is refused."""
    c = odt.compress.get("fp16")
    ok = torch.tensor([65504.0, -65519.99, 1.0])
    assert same_bits(c.decompress(*c.compress(ok, "w")), ok.half().float())
    assert not bool(ok.half().isinf().any()) and bool(torch.tensor([65520.0]).half().isinf())
    with pytest.raises(ValueError, match="'w' has \\|value\\| 6.552e\\+04 above the fp16"):
        c.compress(torch.tensor([65520.0, 1.0]), "w")


def test_bf16_refuses_a_finite_float32_it_rounds_to_inf():
    big = torch.tensor([3.4e38, 1.0, float("inf")])  # 3.4e38 rounds up past float32's maximum
    assert bool(big[:1].bfloat16().isinf().all())
    with pytest.raises(ValueError, match="'w' has \\|value\\| 3.4e\\+38 above the bf16 "
                                         "maximum .*Scale the gradient down or send it as 'none'"):
        odt.compress.get("bf16").compress(big, "w")
    with pytest.raises(ValueError, match="'w' has \\|value\\| 1e\\+300 above the bf16"):
        odt.compress.get("bf16").compress(torch.tensor([1e300, 0.0], dtype=torch.float64), "w")


def test_bf16_refuses_a_float16_input_that_would_decode_to_inf():
    """bfloat16 rounds 65504 up to 65536, above float16's maximum: the round trip into the
    caller's float16 would give inf, so it is refused; an inf already there is not."""
    x = torch.tensor([65504.0, 1.0, float("inf")], dtype=torch.float16)
    with pytest.raises(ValueError, match=r"'w' \(torch.float16\) would decode to inf under "
                                         r"'bf16': it rounds \|value\| 6.55e\+04 above"):
        odt.compress.get("bf16").compress(x, "w")
    fine = torch.tensor([60000.0, float("inf"), float("nan")], dtype=torch.float16)
    c = odt.compress.get("bf16")
    y = c.decompress(*c.compress(fine, "w"))
    torch.testing.assert_close(y, fine.bfloat16().float().half(), rtol=0, atol=0,
                               equal_nan=True)


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
def test_a_finite_input_round_trips_bit_for_bit_as_pytorchs_cast(values):
    """Subnormals, -0.0 and the extremes included: the bits of x, x.half().float() and
    x.bfloat16().float(), where the cast keeps every entry finite."""
    x = torch.from_numpy(values.copy())
    for name in DENSE:
        want = torch_round_trip(name, x)
        c = odt.compress.get(name)
        if name != "none" and bool(want.isinf().any()):
            with pytest.raises(ValueError, match=f"above the {name} maximum"):
                c.compress(x, "g")
            continue
        assert same_bits(c.decompress(*c.compress(x, "g")), want), name


@FAST
@given(values=arrays(np.float32, st.integers(1, 300),
                     elements=st.floats(width=32, allow_nan=True, allow_infinity=True)))
def test_fp16_refuses_exactly_where_a_finite_entry_becomes_inf(values):
    """Against numpy's float16 cast: refused if and only if some finite entry casts to inf;
    otherwise NaN and inf are sent and the round trip is numpy's, bit for bit."""
    x = torch.from_numpy(values.copy())
    with np.errstate(over="ignore", invalid="ignore"):
        half = values.astype(np.float16)
    overflows = bool((np.isinf(half) & np.isfinite(values)).any())
    c = odt.compress.get("fp16")
    if overflows:
        with pytest.raises(ValueError, match="'g' has \\|value\\| .* above the fp16 maximum"):
            c.compress(x, "g")
        return
    y = c.decompress(*c.compress(x, "g")).numpy()
    want = half.astype(np.float32)
    assert np.array_equal(np.isnan(y), np.isnan(want))
    finite = ~np.isnan(want)
    assert np.array_equal(y[finite].view(np.int32), want[finite].view(np.int32))


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
