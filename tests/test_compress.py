"""One suite over every registered compressor (roundtrip, wire bytes, determinism, state,
ratios, errors) plus hand-checked examples for DGC, PowerSGD, QSGD, TernGrad and signSGD."""

from __future__ import annotations

import copy
import io
import math

import numpy as np
import pytest
import torch

import odtkit as odt
from odtkit.compress import (
    DGC,
    ErrorFeedback,
    PowerSGD,
    decode_index,
    encode_index,
    index_dtype,
    pack_bits,
    payload_to_bytes,
    unpack_bits,
)

NAMES = odt.compress.names()
# settings where every compressor does real work on a (64, 64) standard-normal tensor
SETTINGS: dict[str, dict] = {"threshold": {"threshold": 2.0}}


def make(name: str, **kwargs):
    return odt.compress.get(name, **{**SETTINGS.get(name, {}), **kwargs})


def grad(shape=(64, 64), seed=0, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g).to(dtype)


def test_measure_is_a_deprecated_alias_of_wire_report():
    c, x = odt.compress.get("fp16"), grad((8, 8))
    with pytest.warns(DeprecationWarning, match="use odtkit.compress.wire_report"):
        old = odt.compress.measure(c, x)
    assert old == odt.compress.wire_report(c, x)
    assert old.wire_bytes == 2 * 64 and old.dense_bytes == 4 * 64


def test_registry_lists_every_family():
    assert set(NAMES) == {"none", "fp16", "bf16", "topk", "randomk", "threshold", "dgc",
                          "qsgd", "terngrad", "signsgd", "ef-signsgd", "powersgd"}
    assert odt.compress.get("EF_SignSGD").kind == "ef-signsgd"  # case/separators ignored


def test_unknown_name_suggests_the_closest():
    with pytest.raises(ValueError, match="unknown compressor 'topkk'.*'topk'"):
        odt.compress.get("topkk")


def test_unknown_keyword_lists_the_valid_ones():
    with pytest.raises(TypeError, match="takes no ratio.*density"):
        odt.compress.get("topk", ratio=0.1)


# -- the shared suite -----------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shape", [(7,), (5, 6), (8, 3, 3, 3)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_roundtrip_keeps_shape_and_dtype(name, shape, dtype):
    c = make(name, **({"rank_too_large": "dense"} if name == "powersgd" else {}))
    x = grad(shape, dtype=dtype)
    payload, ctx = c.compress(x, "w")
    y = c.decompress(payload, ctx)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert all(isinstance(t, torch.Tensor) for t in payload)
    assert not any(isinstance(v, torch.Tensor) for v in ctx.meta.values())  # nothing hides in ctx


def roundtrip(name: str, x: torch.Tensor, **kwargs) -> torch.Tensor:
    c = make(name, **kwargs)
    return c.decompress(*c.compress(x, "w"))


def bucket_norms(x: torch.Tensor, size: int = 512) -> torch.Tensor:
    """Per entry, the L2 norm of its QSGD bucket (float64, by hand)."""
    flat = x.reshape(-1).double()
    padded = torch.cat([flat, flat.new_zeros(-flat.numel() % size)]).view(-1, size)
    return padded.pow(2).sum(1).sqrt().repeat_interleave(size)[: flat.numel()]


def check_values(name: str, x: torch.Tensor, y: torch.Tensor) -> None:
    """Decoded values against what each method sends, computed here without the code."""
    flat, out = x.reshape(-1), y.reshape(-1)
    n = flat.numel()
    sign = torch.where(flat < 0, -1.0, 1.0)
    if name in ("none", "fp16", "bf16"):  # exact, or PyTorch's own cast
        want = {"none": flat, "fp16": flat.half().float(), "bf16": flat.bfloat16().float()}
        assert torch.equal(out, want[name])
    elif name in ("topk", "dgc"):  # dgc's first call sends top-k of g (25% in warm-up)
        k = math.ceil((0.01 if name == "topk" else 0.25) * n - 1e-9)
        keep = torch.topk(flat.abs(), k).indices
        assert torch.equal(out[keep], flat[keep]) and out.count_nonzero() == k
    elif name == "randomk":
        kept = out != 0
        assert int(kept.sum()) == math.ceil(0.01 * n - 1e-9)
        assert torch.equal(out[kept], flat[kept])
    elif name == "threshold":
        assert torch.equal(out, torch.where(flat.abs() > 2.0, flat, 0.0))
    elif name == "qsgd":  # within one level (norm / s) of g, never of the opposite sign
        assert ((out.double() - flat.double()).abs() <= bucket_norms(x) / 15 * (1 + 1e-5)).all()
        assert (out * flat >= 0).all()
    elif name == "terngrad":
        s = float(flat.abs().max())
        assert set(out.unique().tolist()) <= {-s, 0.0, s} and (out * flat >= 0).all()
        assert out[flat.abs().argmax()] == flat[flat.abs().argmax()]
    elif name == "signsgd":
        assert torch.equal(out, sign)
    elif name == "ef-signsgd":
        torch.testing.assert_close(out, sign * flat.abs().double().mean().float())
    elif name == "powersgd":  # lowrank: rank-2 projection P P^T M, see the test below
        assert torch.equal(out, flat) if x.dim() == 1 else out.shape == flat.shape
    else:
        raise AssertionError(f"no value check for {name!r}")


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shape", [(7,), (5, 6), (8, 3, 3, 3), (40, 30)])
def test_roundtrip_values_match_each_method(name, shape):
    x = grad(shape, seed=len(shape))
    check_values(name, x, roundtrip(name, x, **({"rank_too_large": "dense"}
                                                 if name == "powersgd" else {})))


@pytest.mark.parametrize("shape", [(12, 9), (8, 3, 3, 3)])
def test_powersgd_is_one_power_iteration_from_the_same_q(shape):
    """Decoded = P P^T M with P = orth(M Q): the rank-2 projection, by torch.linalg."""
    x = grad(shape, seed=4)
    matrix = x.reshape(shape[0], -1).double()
    q0 = torch.randn(matrix.shape[1], 2, generator=torch.Generator().manual_seed(9))
    c = PowerSGD(rank=2)
    c.load_state_dict({"steps": {}, "q": {"w": q0}})  # the warm start the code will use
    payload, ctx = c.compress(x, "w")
    p = torch.linalg.qr(matrix @ q0.double()).Q  # (n, 2), orthonormal
    torch.testing.assert_close(c.decompress(payload, ctx).double(), (p @ p.T @ matrix).view(shape),
                               rtol=1e-5, atol=1e-5)
    sent_p, sent_q = payload
    torch.testing.assert_close(sent_p.double() @ sent_p.double().T, p @ p.T, atol=1e-5, rtol=0)
    torch.testing.assert_close(sent_q.double() @ sent_p.double().T, matrix.T @ p @ p.T,
                               atol=1e-5, rtol=1e-5)  # Q = M^T P, whatever P's column signs


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_bytes_and_reset_replays(name):
    a, b = make(name, seed=3), make(name, seed=3)
    first = [payload_to_bytes(a.compress(grad(seed=s), "w")[0]) for s in range(3)]
    assert first == [payload_to_bytes(b.compress(grad(seed=s), "w")[0]) for s in range(3)]
    a.reset()
    assert first == [payload_to_bytes(a.compress(grad(seed=s), "w")[0]) for s in range(3)]
    if a.stochastic:  # the seed really drives the draws
        other = make(name, seed=4)
        assert first != [payload_to_bytes(other.compress(grad(seed=s), "w")[0]) for s in range(3)]


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_resumes_exactly(name):
    a = make(name)
    a.compress(grad(seed=0), "w")
    buffer = io.BytesIO()
    torch.save(a.state_dict(), buffer)
    buffer.seek(0)
    b = make(name)
    b.load_state_dict(torch.load(buffer))
    for s in (1, 2):
        pa, pb = a.compress(grad(seed=s), "w")[0], b.compress(grad(seed=s), "w")[0]
        assert payload_to_bytes(pa) == payload_to_bytes(pb)


def expected_wire_bytes(name: str, x: torch.Tensor) -> int:
    """Bytes by the formula of each encoding, for a (64, 64) tensor (int16 indices)."""
    n = x.numel()
    k = math.ceil(0.01 * n)
    return {
        "none": 4 * n,
        "fp16": 2 * n,
        "bf16": 2 * n,
        "topk": k * (4 + 2),
        "randomk": k * 4,
        "threshold": int((x.abs() > 2.0).sum()) * (4 + 2),
        "dgc": math.ceil(0.25 * n) * (4 + 2),  # epoch 0 of the warm-up, exact selection
        "qsgd": 4 * math.ceil(n / 512) + n // 8 + n * 4 // 8,  # norms, signs, 4-bit levels
        "terngrad": 4 + 2 * n // 8,
        "signsgd": n // 8,
        "ef-signsgd": 4 + n // 8,
        "powersgd": 4 * 2 * (64 + 64),
    }[name]


@pytest.mark.parametrize("name", NAMES)
def test_ratio_matches_the_encoding(name):
    x = grad((64, 64))
    c = make(name, **({"sample_ratio": 1.0} if name == "dgc" else {}))
    want = expected_wire_bytes(name, x)
    report = odt.compress.wire_report(c, x)
    assert report.wire_bytes == want
    assert odt.compress.compression_ratio(c, x) == pytest.approx(4 * x.numel() / want)
    assert odt.compress.bits_per_element(c, x) == pytest.approx(8 * want / x.numel())
    assert c.state_dict()["steps"] == {}  # measuring did not touch the compressor


DENSE = ("none", "fp16", "bf16")


@pytest.mark.parametrize("name", [n for n in NAMES if n not in DENSE])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_gradient_is_refused_naming_the_tensor(name, bad):
    x = grad((16, 16))
    x[3, 4] = bad
    with pytest.raises(ValueError, match=r"'fc\.weight'.*non-finite.*" + str(bad)):
        make(name).compress(x, "fc.weight")


@pytest.mark.parametrize("name", DENSE)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_dense_codecs_send_non_finite_entries_as_pytorch_does(name, bad):
    """Transparent, as PyTorch's allreduce and fp16/bf16 hooks: the entry arrives as it was
    (NaN as NaN, +-inf as +-inf) and every other entry as plain PyTorch casts it."""
    x = grad((16, 16))
    x[3, 4] = bad
    y = make(name).decompress(*make(name).compress(x, "fc.weight"))
    cast = {"none": None, "fp16": torch.float16, "bf16": torch.bfloat16}[name]
    want = x.clone() if cast is None else x.to(cast).float()
    torch.testing.assert_close(y, want, rtol=0, atol=0, equal_nan=True)
    assert math.isnan(y[3, 4]) if math.isnan(bad) else y[3, 4] == bad


@pytest.mark.parametrize("name", ["topk", "randomk", "dgc"])
@pytest.mark.parametrize("density", [0.0, -0.1, 1.5])
def test_density_outside_unit_interval_is_refused(name, density):
    with pytest.raises(ValueError, match=rf"density must be a finite number in \(0, 1\], "
                                         rf"got density={density}"):
        odt.compress.get(name, density=density)


@pytest.mark.parametrize(("name", "kwargs", "pattern"), [
    ("powersgd", {"rank": 0}, "rank must be an integer >= 1, got rank=0"),
    ("qsgd", {"levels": 0}, "levels must be an integer in \\[1, 255\\], got levels=0"),
    ("topk", {"k": 0}, "k must be an integer >= 1, got k=0"),
    ("topk", {"k": 3, "density": 0.1}, "exactly one of density or k"),
    ("signsgd", {"scale": "max"}, "unknown signsgd scale 'max'"),
    ("dgc", {"momentum": 1.0}, "momentum must be a finite number in \\[0, 1\\), got momentum=1.0"),
    ("dgc", {"clip_norm": 0.0}, "clip_norm must be a finite number in \\(0, inf\\)"),
    ("terngrad", {"clip_sigma": 0.0}, "clip_sigma must be a finite number in \\(0, inf\\)"),
    ("threshold", {"threshold": float("nan")}, "threshold must be a finite number in \\[0, inf\\)"),
    ("qsgd", {"seed": -1}, "seed must be a non-negative integer, got seed=-1"),
    ("powersgd", {"rank_too_large": "drop"}, "unknown rank_too_large policy 'drop'"),
])
def test_bad_settings_are_refused(name, kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        odt.compress.get(name, **kwargs)


def test_non_integer_counts_are_refused_as_type_errors():
    with pytest.raises(TypeError, match="k must be an integer, got k=2.5"):
        odt.compress.get("topk", k=2.5)
    with pytest.raises(TypeError, match="density must be a finite number in \\(0, 1\\], got "
                                        "density='0.1'"):
        odt.compress.get("topk", density="0.1")


def test_rank_above_min_dimension_is_refused_naming_the_tensor():
    with pytest.raises(ValueError, match=r"rank=4 exceeds min\(n, m\)=3 of tensor 'head'"):
        PowerSGD(rank=4).compress(grad((3, 40)), "head")
    payload, ctx = PowerSGD(rank=4, rank_too_large="dense").compress(grad((3, 40)), "head")
    assert ctx.meta["mode"] == "dense" and payload[0].numel() == 120


def test_k_larger_than_the_tensor_is_refused():
    with pytest.raises(ValueError, match="k=50 exceeds the 30 entries of tensor 'b'"):
        odt.compress.get("topk", k=50).compress(grad((30,)), "b")


def test_fp16_overflow_is_refused_not_sent_as_inf():
    with pytest.raises(ValueError, match="'big'.*above the fp16 maximum"):
        odt.compress.get("fp16").compress(torch.tensor([1e5, 1.0]), "big")
    assert odt.compress.get("bf16").compress(torch.tensor([1e5, 1.0]), "big")[0][0].isfinite().all()
    # an inf that came with the input does not hide the finite entry the cast overflows
    with pytest.raises(ValueError, match="'big' has \\|value\\| 1e\\+05 above the fp16 maximum"):
        odt.compress.get("fp16").compress(torch.tensor([float("inf"), 1e5, float("nan")]), "big")


def test_error_feedback_refuses_compressors_with_their_own_residual():
    for name in ("dgc", "ef-signsgd"):
        with pytest.raises(ValueError, match="already keeps its own residual"):
            odt.compress.get(name, error_feedback=True)
    assert isinstance(odt.compress.get("topk", error_feedback=True), ErrorFeedback)


# -- wire helpers against independent references ---------------------------
@pytest.mark.parametrize("bits", range(1, 9))
def test_pack_bits_matches_numpy_packbits_of_the_msb_first_stream(bits):
    codes = torch.randint(0, 2**bits, (37,), generator=torch.Generator().manual_seed(bits))
    packed = pack_bits(codes, bits)
    # each code most significant bit first, the stream packed as numpy does (bitorder big)
    stream = [(int(c) >> b) & 1 for c in codes for b in reversed(range(bits))]
    assert packed.dtype == torch.uint8 and packed.numel() == math.ceil(37 * bits / 8)
    assert packed.tolist() == np.packbits(np.array(stream, dtype=np.uint8)).tolist()
    assert torch.equal(unpack_bits(packed, bits, 37), codes.to(torch.uint8))


def test_pack_bits_by_hand():
    assert pack_bits(torch.tensor([1, 0, 0, 0, 0, 0, 0, 1, 1]), 1).tolist() == [0x81, 0x80]
    assert pack_bits(torch.tensor([0xA, 0x3, 0xF]), 4).tolist() == [0xA3, 0xF0]
    assert pack_bits(torch.tensor([2, 1, 0, 3, 1]), 2).tolist() == [0b10010011, 0b01000000]
    assert pack_bits(torch.tensor([5, 2, 7]), 3).tolist() == [0b10101011, 0b10000000]


def test_one_bit_order_for_masks_and_codes():
    mask = torch.rand(3, 7, generator=torch.Generator().manual_seed(0)) > 0.5
    assert torch.equal(odt.engine.pack_bits(mask), pack_bits(mask.to(torch.uint8), 1))
    assert torch.equal(odt.engine.pack_bits(mask), pack_bits(mask, 1))


def test_pack_bits_refuses_codes_that_do_not_fit():
    with pytest.raises(ValueError, match="code 4 does not fit in bits=2"):
        pack_bits(torch.tensor([1, 4]), 2)
    with pytest.raises(ValueError, match="code -1 does not fit in bits=3"):
        pack_bits(torch.tensor([-1, 2]), 3)
    with pytest.raises(ValueError, match="bits must be an integer in \\[1, 8\\], got bits=9"):
        pack_bits(torch.tensor([1]), 9)
    with pytest.raises(ValueError, match="5 codes of 3 bits need 2 uint8 bytes, got 3"):
        unpack_bits(torch.zeros(3, dtype=torch.uint8), 3, 5)


def test_index_type_is_the_narrowest_that_fits():
    cases = [(256, torch.uint8), (257, torch.int16), (2**16, torch.int16), (2**16 + 1, torch.int32),
             (2**32, torch.int32), (2**32 + 1, torch.int64)]
    for numel, dtype in cases:
        assert index_dtype(numel) == dtype
        edge = torch.tensor([0, numel // 2, numel - 1])
        code = encode_index(edge, numel)
        assert code.dtype == dtype and torch.equal(decode_index(code, numel), edge)


# -- hand examples ------------------------------------------------------------
def test_qsgd_decodes_to_norm_times_levels():
    x = torch.tensor([3.0, -4.0, 0.0, 0.0])  # norm 5, s = 2: |x|/norm*s = 1.2, 1.6, 0, 0
    c = odt.compress.get("qsgd", levels=2, bucket_size=None)
    y = c.decompress(*c.compress(x, "w"))
    assert y[0].item() in (2.5, 5.0) and y[1].item() in (-2.5, -5.0)
    assert y[2:].abs().sum() == 0


def test_terngrad_sends_scale_times_ternary():
    x = torch.tensor([0.5, -2.0, 1.0, 0.0, -0.25])
    c = odt.compress.get("terngrad")
    y = c.decompress(*c.compress(x, "w"))
    assert set(y.tolist()) <= {-2.0, 0.0, 2.0} and y[1] == -2.0 and y[3] == 0  # max kept surely


def test_signsgd_scales():
    x = torch.tensor([1.0, -3.0, 0.0, 2.0])
    plain, mean = odt.compress.get("signsgd"), odt.compress.get("signsgd", scale="mean")
    assert plain.decompress(*plain.compress(x, "w")).tolist() == [1, -1, 1, 1]  # 0 -> +1
    assert mean.decompress(*mean.compress(x, "w")).tolist() == [1.5, -1.5, 1.5, 1.5]


def test_ef_signsgd_follows_karimireddy_et_al():
    c = odt.compress.get("ef-signsgd")
    g1, g2 = torch.tensor([1.0, -3.0, 0.5, 2.0]), torch.tensor([-1.0, 1.0, 1.0, 0.0])
    e = torch.zeros(4)
    for g in (g1, g2):
        p = g + e
        want = p.abs().sum() / 4 * torch.where(p < 0, -1.0, 1.0)
        sent = c.decompress(*c.compress(g, "w"))
        e = p - want
        torch.testing.assert_close(sent, want)
        torch.testing.assert_close(c.residual("w"), e)


def test_powersgd_sends_r_times_n_plus_m_numbers_first_dim_by_rest():
    c = PowerSGD(rank=3)
    for shape, (n, m) in [((40, 30), (40, 30)), ((16, 8, 3, 3), (16, 72)), ((12, 4, 5), (12, 20))]:
        payload, ctx = c.compress(grad(shape), f"w{shape}")
        assert ctx.meta["mode"] == "lowrank"
        assert sum(t.numel() for t in payload) == 3 * (n + m) and c.nbytes(payload) == 12 * (n + m)
    for shape in [(50,), (6, 5)]:  # a vector; a matrix where rank 3 would not save bytes
        payload, ctx = c.compress(grad(shape), f"v{shape}")
        assert ctx.meta["mode"] == "dense" and payload[0].numel() == math.prod(shape)


def test_powersgd_warm_start_reaches_the_best_rank_r_error():
    g = torch.Generator().manual_seed(0)
    for trial in range(3):
        n, m, r = 60 + 10 * trial, 45, 2
        low = torch.randn(n, r, generator=g) @ torch.randn(r, m, generator=g)
        matrix = low + 0.3 * torch.randn(n, m, generator=g)
        u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
        best = torch.linalg.norm(matrix - (u[:, :r] * s[:r]) @ vh[:r])
        c = PowerSGD(rank=r, seed=trial)
        for _ in range(4):  # same matrix each step: warm-started subspace iteration
            approx = c.decompress(*c.compress(matrix, "w"))
        assert torch.linalg.norm(matrix - approx) <= 1.10 * best


def test_powersgd_allreduce_is_powersgd_of_the_mean():
    workers = [grad((30, 20), seed=s) for s in range(3)]
    shared, reference = PowerSGD(rank=2, seed=5), PowerSGD(rank=2, seed=5)
    for _ in range(2):  # the warm-start Q is the averaged one on both paths
        got = shared.allreduce(workers, "w")
        want = reference.decompress(*reference.compress(torch.stack(workers).mean(0), "w"))
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="workers disagree on the shape of 'w'"):
        shared.allreduce([grad((30, 20)), grad((20, 30))], "w")


def test_dgc_momentum_correction_and_masking_follow_the_paper():
    g1, g2 = torch.tensor([1.0, -2.0, 0.5, 3.0]), torch.tensor([0.5, 1.5, -1.0, 0.2])
    c = DGC(density=0.25, warmup=False, momentum=0.5)  # k = 1
    assert c.decompress(*c.compress(g1, "w")).tolist() == [0, 0, 0, 3.0]
    assert c.velocity("w").tolist() == [1.0, -2.0, 0.5, 0.0]  # masked where sent
    assert c.accumulation("w").tolist() == [1.0, -2.0, 0.5, 0.0]
    # u = 0.5 u + g2 = [1, 0.5, -0.75, 0.2]; v = v + u = [2, -1.5, -0.25, 0.2]
    assert c.decompress(*c.compress(g2, "w")).tolist() == [2.0, 0, 0, 0]
    torch.testing.assert_close(c.velocity("w"), torch.tensor([0.0, 0.5, -0.75, 0.2]))
    torch.testing.assert_close(c.accumulation("w"), torch.tensor([0.0, -1.5, -0.25, 0.2]))


def test_dgc_without_masking_keeps_the_stale_momentum():
    c = DGC(density=0.25, warmup=False, momentum=0.5, momentum_masking=False)
    c.compress(torch.tensor([1.0, -2.0, 0.5, 3.0]), "w")
    assert c.velocity("w").tolist() == [1.0, -2.0, 0.5, 3.0]
    sent = c.decompress(*c.compress(torch.tensor([0.5, 1.5, -1.0, 0.2]), "w"))
    # u = [1, 0.5, -0.75, 1.7]; v = [1, -2, 0.5, 0] + u = [2, -1.5, -0.25, 1.7]
    assert sent.tolist() == [2.0, 0, 0, 0]
    torch.testing.assert_close(c.accumulation("w"), torch.tensor([0.0, -1.5, -0.25, 1.7]))


def test_dgc_without_momentum_correction_accumulates_raw_gradients():
    c = DGC(density=0.25, warmup=False, momentum_correction=False)
    c.compress(torch.tensor([1.0, -2.0, 0.5, 3.0]), "w")
    sent = c.decompress(*c.compress(torch.tensor([0.5, 1.5, -1.0, 0.2]), "w"))
    assert sent.tolist() == [1.5, 0, 0, 0]  # v = [1.5, -0.5, -0.5, 0.2]
    with pytest.raises(KeyError, match="no velocity for 'w'"):
        c.velocity("w")


def test_dgc_local_clipping_scales_the_threshold_by_workers():
    c = DGC(density=1.0, warmup=False, clip_norm=4.0, num_workers=4)
    sent = c.decompress(*c.compress(torch.tensor([6.0, 8.0]), "w"))  # norm 10 -> 4 / sqrt(4)
    torch.testing.assert_close(sent, torch.tensor([1.2, 1.6]))
    small = c.decompress(*c.compress(torch.tensor([0.3, 0.4]), "v"))  # under the bound: as is
    torch.testing.assert_close(small, torch.tensor([0.3, 0.4]))


def test_dgc_warmup_schedule_matches_the_paper():
    c = DGC(density=0.001, warmup_epochs=4)
    paper = [0.25, 0.0625, 0.015625, 0.004, 0.001, 0.001]  # 75% ... 99.9% sparsity
    for epoch, want in enumerate(paper):
        c.set_epoch(epoch)
        assert c.current_density == pytest.approx(want, rel=0.02)
    c.set_epoch(1)
    payload, _ = copy.deepcopy(c).compress(grad((100, 100)), "w")
    assert payload[0].numel() <= math.ceil(c.current_density * 10_000)
    assert DGC(density=0.001, warmup=False).current_density == 0.001


def test_dgc_sampled_threshold_sends_at_most_k_large_entries():
    x = grad((200, 200))
    c = DGC(density=0.01, warmup=False, sample_ratio=0.01, min_sample=100)
    values, _ = c.compress(x, "w")[0]
    k = 400
    assert values.numel() == k  # the sampled threshold was refined until k passed
    torch.testing.assert_close(values.abs().sort().values,
                               x.abs().flatten().topk(k).values.sort().values)
