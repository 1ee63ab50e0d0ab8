"""Each compressor's wire bytes against its documented layout: the byte count derived by
hand, and the serialized bytes (payload_to_bytes) parsed back here with numpy, field by
field, and checked against the input gradient, never against the code's own numbers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes, arrays

import odtkit as odt
from odtkit.compress import payload_to_bytes

N_ROWS, N_COLS = 50, 70
N = N_ROWS * N_COLS  # 3,500 entries: int16 positions, stored as position - 32768
SETTINGS = {"threshold": {"threshold": 2.0}, "dgc": {"sample_ratio": 1.0}}


def grad(seed: int = 0) -> torch.Tensor:
    return torch.randn(N_ROWS, N_COLS, generator=torch.Generator().manual_seed(seed))


def fields(image: bytes, layout: list[tuple[str, np.dtype, int]]) -> dict[str, np.ndarray]:
    """Cut ``image`` into named arrays of the given numpy dtypes and counts, in order; the
    whole image must be used."""
    out, pos = {}, 0
    for name, dtype, count in layout:
        size = np.dtype(dtype).itemsize * count
        out[name] = np.frombuffer(image[pos:pos + size], dtype=dtype)
        pos += size
    assert pos == len(image), f"layout covers {pos} of {len(image)} bytes"
    return out


def signs(packed: np.ndarray, n: int) -> np.ndarray:
    """1 where negative, in numpy.packbits order (most significant bit first)."""
    return np.unpackbits(packed)[:n]


def sparse(image: bytes, x: np.ndarray, count: int) -> np.ndarray:
    """k fp32 values then k int16 codes: the positions, after checking the values."""
    f = fields(image, [("values", np.float32, count), ("codes", np.int16, count)])
    pos = f["codes"].astype(np.int64) + 32768
    assert np.array_equal(f["values"], x[pos])  # values are the gradient's, at those positions
    return pos


def top(x: np.ndarray, k: int) -> set[int]:
    return set(np.argsort(-np.abs(x), kind="stable")[:k].tolist())


def check_none(image, x):
    assert np.array_equal(fields(image, [("v", np.float32, N)])["v"], x)


def check_fp16(image, x):
    assert np.array_equal(fields(image, [("v", np.float16, N)])["v"], x.astype(np.float16))


def check_bf16(image, x):
    bits = fields(image, [("v", np.uint16, N)])["v"].astype(np.uint32) << 16
    want = torch.from_numpy(x).bfloat16().float().numpy()  # bfloat16: the top half of fp32
    assert np.array_equal(bits.view(np.float32), want)


def check_topk(image, x):
    k = math.ceil(0.01 * N)
    assert set(sparse(image, x, k).tolist()) == top(x, k)


def check_randomk(image, x):
    values = fields(image, [("v", np.float32, math.ceil(0.01 * N))])["v"]
    assert np.isin(values, x).all() and len(set(values.tolist())) == values.size


def check_threshold(image, x):
    count = int((np.abs(x) > 2.0).sum())
    assert set(sparse(image, x, count).tolist()) == set(np.flatnonzero(np.abs(x) > 2.0).tolist())


def check_dgc(image, x):  # epoch 0 of the warm-up: density 0.25; the first call sends top-k(g)
    k = math.ceil(0.25 * N)
    assert set(sparse(image, x, k).tolist()) == top(x, k)


def check_qsgd(image, x):
    buckets = math.ceil(N / 512)
    f = fields(image, [("norms", np.float32, buckets), ("signs", np.uint8, math.ceil(N / 8)),
                       ("levels", np.uint8, math.ceil(N * 4 / 8))])
    padded = np.concatenate([x, np.zeros(buckets * 512 - N)]).astype(np.float64)
    np.testing.assert_allclose(f["norms"], np.linalg.norm(padded.reshape(-1, 512), axis=1),
                               rtol=1e-6)
    assert np.array_equal(signs(f["signs"], N), (x < 0).astype(np.uint8))
    levels = np.stack([f["levels"] >> 4, f["levels"] & 15], axis=1).reshape(-1)[:N]
    exact = np.abs(x) / np.repeat(f["norms"], 512)[:N] * 15  # s |v| / ||v|| for s = 15
    assert (levels >= np.floor(exact) - 1e-4).all() and (levels <= np.ceil(exact) + 1e-4).all()


def check_terngrad(image, x):
    f = fields(image, [("scale", np.float32, 1), ("codes", np.uint8, math.ceil(2 * N / 8))])
    assert f["scale"][0] == np.abs(x).max()
    codes = np.stack([(f["codes"] >> s) & 3 for s in (6, 4, 2, 0)], axis=1).reshape(-1)[:N]
    assert set(np.unique(codes).tolist()) <= {0, 1, 2}  # 0: zero, 1: +scale, 2: -scale
    assert (x[codes == 1] > 0).all() and (x[codes == 2] < 0).all()
    assert codes[np.argmax(np.abs(x))] != 0  # kept with probability |g| / max|g| = 1


def check_signsgd(image, x):
    assert np.array_equal(signs(fields(image, [("s", np.uint8, math.ceil(N / 8))])["s"], N), x < 0)


def check_ef_signsgd(image, x):
    f = fields(image, [("mean", np.float32, 1), ("s", np.uint8, math.ceil(N / 8))])
    np.testing.assert_allclose(f["mean"][0], np.abs(x.astype(np.float64)).mean(), rtol=1e-6)
    assert np.array_equal(signs(f["s"], N), x < 0)


def check_powersgd(image, x):  # rank 2: P (50, 2) then Q (70, 2), fp32
    f = fields(image, [("p", np.float32, 2 * N_ROWS), ("q", np.float32, 2 * N_COLS)])
    p, q = f["p"].reshape(N_ROWS, 2).astype(np.float64), f["q"].reshape(N_COLS, 2)
    np.testing.assert_allclose(p.T @ p, np.eye(2), atol=1e-5)  # orthonormal columns
    np.testing.assert_allclose(q, x.reshape(N_ROWS, N_COLS).T @ p, rtol=1e-4, atol=1e-4)


CHECKS = {"none": check_none, "fp16": check_fp16, "bf16": check_bf16, "topk": check_topk,
          "randomk": check_randomk, "threshold": check_threshold, "dgc": check_dgc,
          "qsgd": check_qsgd, "terngrad": check_terngrad, "signsgd": check_signsgd,
          "ef-signsgd": check_ef_signsgd, "powersgd": check_powersgd}


def test_every_registered_compressor_has_a_layout_check():
    assert set(CHECKS) == set(odt.compress.names())


@pytest.mark.parametrize("name", odt.compress.names())
def test_serialized_bytes_follow_the_documented_layout(name):
    x = grad()
    c = odt.compress.get(name, **SETTINGS.get(name, {}))
    payload, ctx = c.compress(x, "w")
    image = payload_to_bytes(payload)
    CHECKS[name](image, x.numpy().reshape(-1))
    # the receiver rebuilds the tensor from the bytes alone (the layout comes from config)
    received = odt.compress.payload_from_bytes(image, like=payload)
    assert torch.equal(c.decompress(received, ctx), c.decompress(payload, ctx))
    assert c.nbytes(payload) == len(image) == wire_bytes_by_hand(name, x, **SETTINGS.get(name, {}))


def index_bytes(n: int) -> int:
    return 1 if n <= 2**8 else 2 if n <= 2**16 else 4


def wire_bytes_by_hand(name: str, x: torch.Tensor, *, threshold: float = 0.01,
                       **_: object) -> int:
    """Bytes by the package docstring's table, for the default settings of each name."""
    n = x.numel()
    k = max(1, math.ceil(0.01 * n - 1e-9))
    if name == "powersgd":
        rows, cols = (x.shape[0], n // x.shape[0]) if x.dim() >= 2 else (n, 1)
        lowrank = x.dim() >= 2 and 2 <= min(rows, cols) and rows * cols > 2 * (rows + cols)
        return 4 * 2 * (rows + cols) if lowrank else 4 * n
    return {
        "none": 4 * n, "fp16": 2 * n, "bf16": 2 * n,
        "topk": k * (4 + index_bytes(n)), "randomk": 4 * k,
        "threshold": int((x.abs() > threshold).sum()) * (4 + index_bytes(n)),
        "dgc": max(1, math.ceil(0.25 * n - 1e-9)) * (4 + index_bytes(n)),
        "qsgd": 4 * math.ceil(n / 512) + math.ceil(n / 8) + math.ceil(4 * n / 8),
        "terngrad": 4 + math.ceil(2 * n / 8), "signsgd": math.ceil(n / 8),
        "ef-signsgd": 4 + math.ceil(n / 8),
    }[name]


def shaped_tensors():
    elements = st.one_of(st.floats(-10, 10, width=32), st.sampled_from([0.0, 1.0, -1.0]))
    return arrays(np.float32, array_shapes(min_dims=1, max_dims=3, max_side=40),
                  elements=elements).map(torch.from_numpy)


@pytest.mark.parametrize("name", odt.compress.names())
@settings(max_examples=10, deadline=None, derandomize=True, database=None)
@given(x=shaped_tensors())
def test_wire_bytes_equal_the_hand_count_on_any_shape(name, x):
    kwargs = {"powersgd": {"rank_too_large": "dense"}, "dgc": {"sample_ratio": 1.0}}
    c = odt.compress.get(name, **kwargs.get(name, {}))  # dgc: exact top-k on any size
    payload, _ = c.compress(x, "w")
    assert c.nbytes(payload) == len(payload_to_bytes(payload)) == wire_bytes_by_hand(name, x)
