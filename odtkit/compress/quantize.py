"""Quantizers: every entry travels, in a few bits, bit-packed into uint8 tensors."""

from __future__ import annotations

import math

import torch

from .._checks import check_choice, check_int, check_real
from .base import FP32_MAX, Compressor, Ctx, require_finite
from .elias import sparse_decode, sparse_encode
from .wire import Payload, derive_seed, generator, pack_bits, unpack_bits


def _signs(flat: torch.Tensor) -> torch.Tensor:
    """1 bit per entry: 1 where negative (zero counts as positive). (n,) -> (ceil(n/8),)"""
    return pack_bits(flat < 0, 1)


def _unsigns(packed: torch.Tensor, n: int) -> torch.Tensor:
    """+1.0 / -1.0 per entry from ``_signs``."""
    return 1.0 - 2.0 * unpack_bits(packed, 1, n).float()


class QSGD(Compressor):
    """QSGD (Alistarh et al., NeurIPS 2017): s levels, stochastic rounding, unbiased.

    Per bucket of ``bucket_size`` entries (None: the whole tensor is one bucket):
    Q(v_i) = ||v||_2 * sign(v_i) * l_i / s with l_i = floor(s|v_i|/||v||) rounded
    up with probability equal to the remainder. Wire: one fp32 norm per bucket, then
    ``coding="fixed"`` (s <= 255): 1 sign bit and ceil(log2(s+1)) level bits per entry;
    ``coding="elias"`` (s <= 2**24): the paper's code (``odtkit.compress.elias``): per
    nonzero level, Elias omega of the gap to it, a sign bit and Elias omega of the level,
    its length that of the real stream. Theorem 3.2 of the paper bounds the expected bits
    of one vector of d entries by (3 + (3/2 + o(1)) log(2(s^2+d)/(s(s+sqrt d)))) s(s+sqrt d)
    + 32, and Corollary 3.3 by 2.8 d + 32 at s = sqrt(d). Both codings decode to the same
    tensor. Variance: E||Q(v)-v||^2 <= min(d/s^2, sqrt(d)/s) ||v||^2 per bucket.
    Norms are summed in float32, again in float64 for buckets whose squares could overflow
    or vanish; a bucket whose norm is above float32's maximum is refused (its levels,
    multiples of norm/s, could not be decoded in float32).
    """

    kind = "qsgd"
    unbiased = True
    stochastic = True
    folds_finite_check = True  # the bucket norms

    CODINGS = ("fixed", "elias")

    def __init__(self, *, levels: int = 15, bucket_size: int | None = 512,
                 coding: str = "fixed", seed: int = 0):
        super().__init__(seed=seed)
        self.coding = check_choice("qsgd coding", coding, self.CODINGS)
        self.levels = check_int("levels", levels, low=1,
                                high=255 if self.coding == "fixed" else 2**24)
        self.bucket_size = check_int("bucket_size", bucket_size, low=1, allow_none=True)
        self.bits = math.ceil(math.log2(self.levels + 1))
        self.fixed_size = self.coding == "fixed"  # an Elias stream's length varies

    def config(self) -> dict:
        return {"levels": self.levels, "bucket_size": self.bucket_size, "coding": self.coding,
                "seed": self.seed}

    def _buckets(self, n: int) -> tuple[int, int]:
        size = self.bucket_size or n
        return size, math.ceil(n / size)

    def _encode(self, x: torch.Tensor, name: str, step: int) -> tuple[Payload, dict]:
        flat = x.reshape(-1)
        n = flat.numel()
        size, count = self._buckets(n)
        if size * count == n:
            buckets = flat.view(count, size)
        else:
            buckets = flat.new_zeros(size * count)
            buckets[:n] = flat
            buckets = buckets.view(count, size)
        norms = self._norms(buckets, x, name)  # (count,) fp32, finite
        safe = torch.where(norms > 0, norms, torch.ones_like(norms))
        # |v|/norm <= 1 first, then times s: no overflow for any finite v
        ratio = (buckets.abs() / safe[:, None]).mul_(self.levels).reshape(-1)[:n]  # in [0, s]
        draw = torch.rand(n, generator=generator(derive_seed(self.seed, name, step), flat.device),
                          device=flat.device)
        # floor(r + u), u ~ U[0, 1): r rounded up with probability r - floor(r)
        level = ratio.add_(draw).floor_().clamp_(0, self.levels)
        if self.coding == "elias":
            return (norms, sparse_encode(level.to(torch.int64), flat < 0)), {}
        return (norms, _signs(flat), pack_bits(level.to(torch.uint8), self.bits)), {}

    def _norms(self, buckets: torch.Tensor, x: torch.Tensor, name: str) -> torch.Tensor:
        """L2 norm per bucket. In float32 (the check for NaN and inf) unless a square could
        overflow or underflow: buckets of norm above 2**100 or below 2**-40 are summed again
        in float64 (squares of 1e20 overflow float32, squares below 2**-75 vanish). A norm
        above float32's maximum is refused: the levels are multiples of it."""
        norms = torch.linalg.vector_norm(buckets, dim=1)  # (count,)
        low, high = torch.aminmax(norms)
        if not require_finite(high, x, name) or float(high) > 2.0**100:
            norms = self._wide_norms(buckets, torch.ones_like(norms, dtype=torch.bool), name)
        elif float(low) < 2.0**-40:
            norms = norms.clone()
            small = norms < 2.0**-40
            norms[small] = self._wide_norms(buckets, small, name)
        return norms

    def _wide_norms(self, buckets: torch.Tensor, which: torch.Tensor, name: str) -> torch.Tensor:
        norms = torch.linalg.vector_norm(buckets[which], dim=1, dtype=torch.float64)
        worst = int(norms.argmax())
        if float(norms[worst]) > FP32_MAX:
            bucket = int(which.nonzero()[worst])
            raise ValueError(
                f"tensor {name!r}: bucket {bucket} (bucket_size={self.bucket_size}) has "
                f"L2 norm {float(norms[worst]):.4g}, above the float32 maximum {FP32_MAX:.4g}, "
                "so its QSGD levels cannot be sent or decoded; use a smaller bucket_size "
                "(bucket_size=1 always fits) or scale or clip the gradient down")
        return norms.float()

    def _decode(self, payload: Payload, ctx: Ctx) -> torch.Tensor:
        n = ctx.numel
        size, _ = self._buckets(n)
        if self.coding == "elias":
            norms, stream = payload
            level, negative = sparse_decode(stream, n)
            level, sign = level.float(), 1.0 - 2.0 * negative.float()
        else:
            norms, signs, codes = payload
            level, sign = unpack_bits(codes, self.bits, n).float(), _unsigns(signs, n)
        norm = norms.float()[:, None].expand(-1, size).reshape(-1)[:n]  # (n,) bucket norms
        return norm * sign * (level / self.levels)  # level/s <= 1: no overflow


class TernGrad(Compressor):
    """TernGrad (Wen et al., NeurIPS 2017): scale * {-1, 0, +1}, unbiased.

    scale = max|g| per tensor; entry i is nonzero with probability |g_i|/scale.
    Wire: fp32 scale + 2 bits per entry (0: zero, 1: +scale, 2: -scale).
    ``clip_sigma=c`` first clips g to [-c*std, c*std] as the paper does (c=2.5),
    which trades bias for variance (then ``unbiased`` is False).
    """

    kind = "terngrad"
    unbiased = True
    stochastic = True
    folds_finite_check = True  # the scale, max |g|

    def __init__(self, *, clip_sigma: float | None = None, seed: int = 0):
        super().__init__(seed=seed)
        # e.g. 2.5 as in the paper; None: no clipping
        self.clip_sigma = check_real("clip_sigma", clip_sigma, low=0.0, low_open=True,
                                     allow_none=True)
        self.unbiased = self.clip_sigma is None

    def config(self) -> dict:
        return {"clip_sigma": self.clip_sigma, "seed": self.seed}

    def _encode(self, x: torch.Tensor, name: str, step: int) -> tuple[Payload, dict]:
        flat = x.reshape(-1)
        if self.clip_sigma is not None and flat.numel() > 1:
            require_finite(flat.sum(), x, name)
            bound = float(self.clip_sigma * flat.double().std())  # float64: no overflow
            flat = flat.clamp(-bound, bound)
        mag = flat.abs()
        scale = mag.max()
        require_finite(scale, x, name)
        prob = mag.div_(scale) if scale > 0 else mag.zero_()
        draw = torch.rand(flat.numel(), device=flat.device,
                          generator=generator(derive_seed(self.seed, name, step), flat.device))
        keep = (draw < prob).to(torch.uint8)
        code = keep * (1 + (flat < 0).to(torch.uint8))  # 0, 1 (+) or 2 (-)
        return (scale.reshape(1).float(), pack_bits(code, 2)), {}

    def _decode(self, payload: Payload, ctx: Ctx) -> torch.Tensor:
        scale, codes = payload
        table = torch.tensor([0.0, 1.0, -1.0, 0.0], device=codes.device)
        return table[unpack_bits(codes, 2, ctx.numel).long()] * scale.float()


class SignSGD(Compressor):
    """signSGD (Bernstein et al., ICML 2018): 1 bit per entry, packed.

    ``scale="none"`` sends signs only and decodes to +-1 (the learning rate sets
    the step; aggregation is a majority vote); ``scale="mean"`` adds one fp32
    mean |g| so that the decoded tensor has the gradient's L1 mass. A zero entry
    decodes as +1 (one bit carries no zero). Biased: see ErrorFeedback / 'ef-signsgd'.
    """

    kind = "signsgd"
    needs_error_feedback = True
    SCALES = ("none", "mean")

    def __init__(self, *, scale: str = "none", seed: int = 0):
        super().__init__(seed=seed)
        self.scale = check_choice("signsgd scale", scale, self.SCALES)
        self.folds_finite_check = self.scale == "mean"  # the mean |g|; else the base sums

    def config(self) -> dict:
        return {"scale": self.scale, "seed": self.seed}

    def _encode(self, x: torch.Tensor, name: str, step: int) -> tuple[Payload, dict]:
        flat = x.reshape(-1)
        if self.scale == "none":
            return (_signs(flat),), {}
        mean = flat.abs().mean()
        if not require_finite(mean, x, name):  # the float32 sum overflowed: float64
            mean = flat.abs().mean(dtype=torch.float64).float()
        return (mean.reshape(1), _signs(flat)), {}

    def _decode(self, payload: Payload, ctx: Ctx) -> torch.Tensor:
        signs = _unsigns(payload[-1], ctx.numel)
        return signs if self.scale == "none" else signs * payload[0].float()
