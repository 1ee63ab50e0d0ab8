"""odtkit's compiled dense ops (odtkit/compress/csrc/dense_ops.cpp) against PyTorch's own
casts and copy: ``cast_checked`` gives x.to(float16 / bfloat16)'s bits for every non-NaN
float32 bit pattern, NaN for NaN, and flags exactly the outputs that are inf or NaN;
``uncast`` gives payload.float()'s bits in the asked shape; ``flat_copy`` gives
x.ravel().clone(); both leave anything but a plain contiguous CPU tensor to torch's ops
(None). Lengths run through the vector body and the scalar tail."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _native import native_or_skip
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from odtkit.engine import native

FAST = settings(max_examples=60, deadline=None, derandomize=True, database=None)
CASTS = {torch.float16: False, torch.bfloat16: True}  # dtype -> cast_checked's flag


@pytest.fixture(scope="module")
def kernels():
    native_or_skip()
    return native.ops()


def check_cast(kernels, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """cast_checked(x) against x.to(dtype): same bits where x is not NaN, NaN where it is,
    flat, and the flag set exactly when an output entry is inf or NaN."""
    out, bad = kernels.cast_checked(x, CASTS[dtype])
    want = x.reshape(-1).to(dtype)
    assert out.dtype == dtype and out.shape == (x.numel(),)
    nan = x.reshape(-1).isnan()
    assert torch.equal(out.isnan(), nan)
    assert torch.equal(out[~nan].view(torch.int16), want[~nan].view(torch.int16))
    assert bad == bool((~out.isfinite()).any())
    return out


@FAST
@given(bits=arrays(np.uint32, st.integers(1, 100)))
def test_cast_checked_is_pytorchs_cast_on_any_float32_bits(kernels, bits):
    x = torch.from_numpy(bits.view(np.float32).copy())
    for dtype in CASTS:
        check_cast(kernels, x, dtype)


def test_cast_checked_at_the_edges_of_float16_and_bfloat16(kernels):
    """Rounding ties, subnormals, the largest finite values and the first that round to inf."""
    edges = torch.tensor([
        65504.0, 65519.99, 65520.0, -65520.0, 2.0**-24, 2.0**-25, 3 * 2.0**-26, 2.0**-14,
        -0.0, 1.0 + 2.0**-11, 1.0 + 3 * 2.0**-11, 3.3895e38, 3.3961e38, 3.4028235e38,
        float("inf"), -float("inf"), float("nan"), 1e-45, 1.0 + 2.0**-8, 1.0 + 3 * 2.0**-8])
    for n in (1, 7, 8, 15, 16, 17, 33, 100):  # the scalar tail alone, body and tail, body
        x = edges.repeat(5)[:n].contiguous()
        for dtype in CASTS:
            check_cast(kernels, x, dtype)
    x = torch.randn(100_003, generator=torch.Generator().manual_seed(0)) * 3e4
    assert not check_cast(kernels, x, torch.bfloat16).isinf().any()
    assert check_cast(kernels, x, torch.float16).isinf().any()  # |x| >= 65520 somewhere


def test_a_nan_stays_nan_and_bfloat16_nan_has_pytorchs_vector_bits(kernels):
    x = torch.full((64,), float("nan"))
    for dtype in CASTS:
        out, bad = kernels.cast_checked(x, CASTS[dtype])
        assert bad and bool(out.isnan().all())
    out, _ = kernels.cast_checked(x, True)
    assert torch.equal(out.view(torch.int16), x.to(torch.bfloat16).view(torch.int16))


@FAST
@given(bits=arrays(np.uint16, st.integers(1, 100)))
def test_uncast_is_pytorchs_widening_in_the_asked_shape(kernels, bits):
    raw = torch.from_numpy(bits.view(np.int16).copy())
    for dtype in CASTS:
        payload = raw.view(dtype)
        out = kernels.uncast(payload, [1, payload.numel()])
        want = payload.float()
        assert out.shape == (1, payload.numel()) and out.dtype == torch.float32
        nan = want.isnan()
        assert torch.equal(out.isnan()[0], nan)
        assert torch.equal(out[0][~nan].view(torch.int32), want[~nan].view(torch.int32))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16,
                                   torch.bfloat16])
def test_flat_copy_is_a_flat_copy_of_its_own(kernels, dtype):
    x = (torch.randn(3, 5, 7, generator=torch.Generator().manual_seed(1)) * 100).to(dtype)
    copy = kernels.flat_copy(x)
    assert copy.dtype == dtype and copy.shape == (105,) and torch.equal(copy, x.ravel())
    x.zero_()  # the copy does not share storage
    assert copy.data_ptr() != x.data_ptr() and bool((copy != 0).any())


@pytest.mark.parametrize("x", [
    torch.randn(4, 6).t(),  # strided
    torch.zeros(4, dtype=torch.float64),
    torch.zeros(3, 0),  # empty
    torch.zeros(4, requires_grad=True),
    torch.zeros(4, dtype=torch.int32),
    torch._neg_view(torch.ones(4)),  # the values are minus the bytes
    torch.eye(3).to_sparse(),
], ids=["strided", "float64", "empty", "requires_grad", "int32", "neg_view", "sparse"])
def test_anything_but_the_plain_case_is_left_to_torchs_ops(kernels, x):
    """None, not an error: the Python codec takes these with torch's ops. The copy also
    takes float64 and the 16-bit floats (none's short path does)."""
    assert kernels.cast_checked(x, False) is None and kernels.cast_checked(x, True) is None
    if x.dtype == torch.float64 and x.numel():  # (none's short path takes float64)
        assert torch.equal(kernels.flat_copy(x), x)
    else:
        assert kernels.flat_copy(x) is None


def test_uncast_refuses_a_payload_it_cannot_widen(kernels):
    with pytest.raises(RuntimeError, match=r"uncast: shape \[2, 3\] holds 6 entries, the "
                                           "payload 4"):
        kernels.uncast(torch.zeros(4, dtype=torch.float16), [2, 3])
    with pytest.raises(RuntimeError, match="float16 or bfloat16 CPU tensor, got Float"):
        kernels.uncast(torch.zeros(4), [4])


def test_a_tensor_split_across_threads_is_cast_and_checked_whole(kernels):
    """Above torch's grain size the calls split the tensor across intra-op threads: the bits
    are still torch's, and an inf made in the last chunk alone is still flagged."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        x = torch.randn(300_001, generator=torch.Generator().manual_seed(2))
        for dtype in CASTS:
            assert not check_cast(kernels, x, dtype).isinf().any()
        x[-1] = 7e4  # float16 rounds it to inf; bfloat16 keeps it
        out, bad = kernels.cast_checked(x, False)
        assert bad and bool(out[-1].isinf()) and not bool(out[:-1].isinf().any())
        half = x.half()
        assert torch.equal(kernels.uncast(half, [300_001]).view(torch.int32),
                           half.float().view(torch.int32))
        assert torch.equal(kernels.flat_copy(x.view(1, -1)), x)
    finally:
        torch.set_num_threads(before)


def test_odtkit_native_0_keeps_the_codecs_on_torchs_ops(kernels):
    """The switch the lean engine reads also routes the codecs; with a build present, the
    default ('auto') uses it without compiling anything."""
    import os
    import subprocess
    import sys

    probe = ("import torch, odtkit as odt\n"
             "from odtkit.compress import cast\n"
             "c = odt.compress.get('fp16')\n"
             "c.compress(torch.ones(8), 'w')\n"
             "print(cast._kernel() is not None)")
    seen = {}
    for value in ("0", "auto"):
        env = dict(os.environ, ODTKIT_NATIVE=value)
        done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        assert "compiling" not in done.stderr, done.stderr
        seen[value] = done.stdout.split()[-1]
    assert seen == {"0": "False", "auto": "True"}
