"""Property-based checks: unbiasedness of the stochastic quantizers within a Hoeffding
bound, top-k keeps the k largest magnitudes, error feedback conserves mass (around real
compressors and around one that sends garbage), and bit packing against numpy."""

from __future__ import annotations

import math

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes, arrays

import odtkit as odt
from odtkit.compress import Compressor, ErrorFeedback, decode_index, pack_bits, unpack_bits

FAST = settings(max_examples=12, deadline=None, derandomize=True, database=None)
DRAWS = 300  # stochastic draws averaged in the unbiasedness checks
DELTA = 1e-6  # allowed probability that a correct quantizer fails a check


def tensors(max_side: int = 12, max_dims: int = 3, low: float = -100.0, high: float = 100.0):
    """Finite float32 tensors of 1..max_dims dims, with repeated values and zeros likely."""
    elements = st.one_of(st.floats(low, high, width=32), st.sampled_from([0.0, 1.0, -1.0]))
    return arrays(np.float32, array_shapes(min_dims=1, max_dims=max_dims, max_side=max_side),
                  elements=elements).map(torch.from_numpy)


def assert_unbiased(mean: torch.Tensor, x: torch.Tensor, width: torch.Tensor) -> None:
    """Hoeffding bounds (each holding with probability >= 1 - DELTA) on the mean of DRAWS.

    A draw of entry i lies in an interval of width w_i. Per entry, with a union bound
    over d entries: |mean_i - x_i| <= w_i sqrt(ln(2d/delta) / 2T). Pooled over entries
    (independent draws), the signed, normalized error has a bound sqrt(d) times
    tighter and catches small systematic biases: |sum_i s_i (mean_i - x_i) / w_i| / d
    <= sqrt(ln(2/delta) / 2Td).
    """
    mean, x = mean.reshape(-1).double(), x.reshape(-1).double()
    width = width.reshape(-1).double().expand_as(x)
    d = x.numel()
    per_entry = width * math.sqrt(math.log(2 * d / DELTA) / (2 * DRAWS)) + 1e-5
    assert ((mean - x).abs() <= per_entry).all()
    live = width > 0
    if live.any():
        pooled = (torch.sign(x[live]) * (mean[live] - x[live]) / width[live]).mean()
        count = int(live.sum())
        assert abs(float(pooled)) <= math.sqrt(math.log(2 / DELTA) / (2 * DRAWS * count)) + 1e-5


def mean_of_draws(compressor, x: torch.Tensor) -> torch.Tensor:
    total = torch.zeros_like(x, dtype=torch.float64)
    for _ in range(DRAWS):  # the step counter gives each call fresh draws
        total += compressor.decompress(*compressor.compress(x, "w")).double()
    return (total / DRAWS).float()


@FAST
@given(x=tensors(max_side=16, max_dims=2), levels=st.integers(1, 8),
       bucket=st.sampled_from([None, 4, 16]))
def test_qsgd_is_unbiased(x, levels, bucket):
    c = odt.compress.get("qsgd", levels=levels, bucket_size=bucket, seed=1)
    flat = x.reshape(-1)
    size = bucket or flat.numel()
    padded = torch.cat([flat, flat.new_zeros(-flat.numel() % size)])
    norms = torch.linalg.vector_norm(padded.view(-1, size), dim=1)
    # one draw of entry i is norm/s times level l or l+1: an interval of width norm/s
    width = norms.repeat_interleave(size)[: flat.numel()] / levels
    assert_unbiased(mean_of_draws(c, x), x, width)


@FAST
@given(x=tensors(max_side=16, max_dims=2))
def test_terngrad_is_unbiased(x):
    c = odt.compress.get("terngrad", seed=2)
    width = x.abs().max()  # each draw of entry i is 0 or sign(x_i) * max|x|
    assert_unbiased(mean_of_draws(c, x), x, width)


@FAST
@given(x=tensors(max_side=20, max_dims=2), density=st.floats(0.01, 1.0))
def test_topk_keeps_exactly_the_k_largest_magnitudes(x, density):
    c = odt.compress.get("topk", density=density)
    (values, code), ctx = c.compress(x, "w")
    flat = x.reshape(-1)
    k = max(1, math.ceil(density * flat.numel() - 1e-9))
    index = decode_index(code, flat.numel())
    assert values.numel() == k and index.unique().numel() == k  # k distinct positions
    assert torch.equal(flat[index], values)  # values are the entries at those positions
    # ties: compare the multiset of kept magnitudes with the k largest ones
    assert torch.equal(values.abs().sort().values, flat.abs().sort().values[-k:])
    dense = c.decompress((values, code), ctx).reshape(-1)
    assert torch.equal(dense[index], values) and dense.count_nonzero() <= k


INNER = ["topk", "randomk", "threshold", "qsgd", "terngrad", "signsgd", "powersgd", "fp16"]


@FAST
@given(shape=st.tuples(st.integers(1, 6), st.integers(1, 6)), inner=st.sampled_from(INNER),
       seed=st.integers(0, 2**16))
def test_error_feedback_conserves_mass(shape, inner, seed):
    kwargs = {"rank_too_large": "dense", "rank": 1} if inner == "powersgd" else {}
    ef = ErrorFeedback(odt.compress.get(inner, **kwargs))
    g = torch.Generator().manual_seed(seed)
    old = torch.zeros(shape)
    for _ in range(3):  # three steps on one tensor name
        x = torch.randn(shape, generator=g) * 10
        sent = ef.decompress(*ef.compress(x, "w"))
        new = ef.residual("w")
        torch.testing.assert_close(sent + new, x + old, rtol=1e-5, atol=1e-4)
        old = new.clone()


@FAST
@given(data=st.data(), bits=st.integers(1, 8), n=st.integers(0, 100))
def test_pack_bits_is_numpy_packbits_of_the_msb_first_stream(data, bits, n):
    codes = np.array(data.draw(st.lists(st.integers(0, 2**bits - 1), min_size=n, max_size=n)),
                     dtype=np.uint8)
    stream = np.unpackbits(codes[:, None], axis=1)[:, 8 - bits:].reshape(-1)  # MSB first
    packed = pack_bits(torch.from_numpy(codes), bits)
    assert packed.tolist() == np.packbits(stream).tolist()
    assert torch.equal(unpack_bits(packed, bits, n), torch.from_numpy(codes))


# -- error feedback around a compressor that sends garbage ----------------------
class Garbage(Compressor):
    """Sends values unrelated to the input: a fixed table cycled by step (not even close)."""

    kind = "garbage"
    TABLE = ((10.0, -1.0, 0.0), (0.0, 5.0, -2.0), (-4.0, 0.25, 8.0))

    def _encode(self, x, name, step):
        row = torch.tensor(self.TABLE[step % 3])
        return (row.repeat(x.numel() // 3 + 1)[: x.numel()],), {}

    def _decode(self, payload, ctx):
        return payload[0]


def test_error_feedback_conserves_mass_by_hand_with_a_garbage_compressor():
    ef = ErrorFeedback(Garbage())
    g1, g2 = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0.5, 0.5, 0.5])
    assert ef.decompress(*ef.compress(g1, "w")).tolist() == [10.0, -1.0, 0.0]
    assert ef.residual("w").tolist() == [-9.0, 3.0, 3.0]  # g1 - sent
    # p = g2 + e = [-8.5, 3.5, 3.5]; sent [0, 5, -2]; e = p - sent
    assert ef.decompress(*ef.compress(g2, "w")).tolist() == [0.0, 5.0, -2.0]
    assert ef.residual("w").tolist() == [-8.5, -1.5, 5.5]
    # over both steps: sent + residual == g1 + g2
    assert [10 + 0 - 8.5, -1 + 5 - 1.5, 0 - 2 + 5.5] == (g1 + g2).tolist()


@FAST
@given(x=tensors(max_side=9, max_dims=2), steps=st.integers(1, 4))
def test_error_feedback_conserves_mass_whatever_the_inner_compressor_sends(x, steps):
    ef = ErrorFeedback(Garbage())
    sent_total = torch.zeros(x.shape, dtype=torch.float64)
    for _ in range(steps):
        sent_total += ef.decompress(*ef.compress(x, "w")).double()
    # everything not sent is still in the residual: sum(sent) + e == steps * x
    want = steps * x.double()
    got = sent_total + ef.residual("w").double()
    assert torch.allclose(got, want, rtol=1e-6, atol=1e-4 * (1 + float(want.abs().max())))
