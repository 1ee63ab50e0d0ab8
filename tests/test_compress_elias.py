"""QSGD's Elias coding: the omega coder against codes written out by hand from Elias's
definition, round trips (hypothesis), the compressor's stream against the fixed-width
result of the same draws, and its length against the paper's bound."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes, arrays

import odtkit as odt
from odtkit.compress import elias

FAST = settings(max_examples=40, deadline=None, derandomize=True, database=None)


def omega_by_hand(n: int) -> str:
    """Elias omega of n >= 1, by the textbook recursion on Python strings."""
    code = "0"
    while n > 1:
        binary = bin(n)[2:]
        code = binary + code
        n = len(binary) - 1
    return code


def stream(packed: torch.Tensor) -> str:
    return "".join(str(b) for b in np.unpackbits(packed.numpy()))


@pytest.mark.parametrize(("n", "code"), [(1, "0"), (2, "100"), (3, "110"), (4, "101000"),
                                         (7, "101110"), (17, "10100100010"),
                                         (100, "1011011001000")])
def test_omega_codes_written_out_by_hand(n, code):
    assert stream(elias.omega_encode(torch.tensor([n]))).startswith(code)
    assert int(elias.omega_lengths(torch.tensor([n]))[0]) == len(code)


@FAST
@given(values=st.lists(st.integers(1, 2**40), min_size=0, max_size=60))
def test_omega_round_trip_and_lengths(values):
    x = torch.tensor(values, dtype=torch.int64)
    packed = elias.omega_encode(x)
    want = "".join(omega_by_hand(v) for v in values)
    assert stream(packed)[: len(want)] == want and packed.numel() == math.ceil(len(want) / 8)
    assert torch.equal(elias.omega_decode(packed, len(values)), x)
    assert int(elias.omega_lengths(x).sum()) == len(want)


def test_omega_refuses_zero():
    with pytest.raises(ValueError, match="integers >= 1, got 0"):
        elias.omega_encode(torch.tensor([3, 0]))


def test_sparse_code_by_hand():
    """levels [0, 3, 0, 0, 1], signs [+, -, +, +, +]: count 2 + 1 = 3 -> 110; gap 2 -> 100,
    sign 1, level 3 -> 110; gap 3 -> 110, sign 0, level 1 -> 0; one pad bit."""
    packed = elias.sparse_encode(torch.tensor([0, 3, 0, 0, 1]),
                                 torch.tensor([False, True, False, False, False]))
    assert stream(packed) == "110" + "100" + "1" + "110" + "110" + "0" + "0" + "0"
    level, negative = elias.sparse_decode(packed, 5)
    assert level.tolist() == [0, 3, 0, 0, 1] and negative.tolist() == [0, 1, 0, 0, 0]


@FAST
@given(data=st.data(), n=st.integers(1, 200))
def test_sparse_code_round_trip(data, n):
    level = torch.tensor(data.draw(st.lists(st.integers(0, 3000), min_size=n, max_size=n)))
    negative = torch.tensor(data.draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    got_level, got_negative = elias.sparse_decode(elias.sparse_encode(level, negative), n)
    assert torch.equal(got_level, level)
    assert torch.equal(got_negative, negative & (level > 0))  # zeros carry no sign


def test_a_truncated_stream_is_refused():
    packed = elias.sparse_encode(torch.tensor([5, 0, 7, 9]), torch.tensor([1, 0, 1, 0]).bool())
    with pytest.raises(ValueError, match="ends inside a code"):
        elias.sparse_decode(packed[:2], 4)


def finite_tensors():
    return arrays(np.float32, array_shapes(min_dims=1, max_dims=2, max_side=40),
                  elements=st.floats(-1e6, 1e6, width=32)).map(torch.from_numpy)


@FAST
@given(x=finite_tensors(), levels=st.integers(1, 255), bucket=st.sampled_from([None, 7, 64]),
       seed=st.integers(0, 100))
def test_elias_decodes_to_the_fixed_width_result_of_the_same_draws(x, levels, bucket, seed):
    fixed = odt.compress.get("qsgd", levels=levels, bucket_size=bucket, seed=seed)
    coded = odt.compress.get("qsgd", levels=levels, bucket_size=bucket, seed=seed,
                             coding="elias")
    payload, ctx = coded.compress(x, "w")
    assert torch.equal(coded.decompress(payload, ctx), fixed.decompress(*fixed.compress(x, "w")))
    # bytes: the fp32 norms and the stream itself, every byte of it on the wire
    count = math.ceil(x.numel() / (bucket or x.numel()))
    assert coded.nbytes(payload) == 4 * count + payload[1].numel()
    assert payload[1].dtype == torch.uint8 and not coded.fixed_size


def test_elias_within_the_papers_bound_at_s_sqrt_n():
    """Corollary 3.3 of Alistarh et al. (2017): at s = sqrt(n) the expected code length is at
    most 2.8 n + 32 bits. Gaussian vectors of n = 4096 and 16384 entries, several draws."""
    for n in (4096, 16384):
        s = math.isqrt(n)
        c = odt.compress.get("qsgd", levels=s, bucket_size=None, coding="elias")
        bits = [8 * c.nbytes(c.compress(torch.randn(n, generator=torch.Generator()
                                                     .manual_seed(i)), "w")[0])
                for i in range(4)]
        bound = 2.8 * n + 32
        assert 0.9 * bound <= sum(bits) / len(bits) <= bound, (n, sum(bits) / len(bits), bound)


def test_elias_is_shorter_than_fixed_width_where_levels_are_sparse():
    x = torch.randn(4096, generator=torch.Generator().manual_seed(0))
    fixed, coded = (odt.compress.get("qsgd", coding=c) for c in ("fixed", "elias"))
    assert coded.nbytes(coded.compress(x, "w")[0]) < fixed.nbytes(fixed.compress(x, "w")[0])


def test_coding_and_levels_are_checked():
    with pytest.raises(ValueError, match="unknown qsgd coding 'huffman'.*fixed, elias"):
        odt.compress.get("qsgd", coding="huffman")
    with pytest.raises(ValueError, match=r"levels must be an integer in \[1, 255\]"):
        odt.compress.get("qsgd", levels=1000)
    assert odt.compress.get("qsgd", levels=1000, coding="elias").levels == 1000
