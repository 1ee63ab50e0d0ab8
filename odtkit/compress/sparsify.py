"""Sparsifiers: send a few entries. Values travel in fp32, positions as narrow ints.

Index width follows ``wire.index_dtype(numel)``: uint8 up to 256 entries, int16
up to 65,536, int32 up to 2**32, else int64, and is counted in ``nbytes``.
"""

from __future__ import annotations

import math

import torch

from .._checks import check_int, check_real, check_seed
from .base import Compressor, Ctx, check_fraction, keep_count, require_finite
from .wire import Payload, decode_index, derive_seed, encode_index, generator


def sparse_payload(values: torch.Tensor, index: torch.Tensor, numel: int) -> Payload:
    """(values fp32 (k,), index code (k,)) for positions ``index`` of a flat tensor."""
    return values.float().contiguous(), encode_index(index, numel)


def scatter(payload: Payload, ctx: Ctx) -> torch.Tensor:
    """Dense fp32 tensor (numel,) with the payload's values at their positions."""
    values, code = payload
    out = torch.zeros(ctx.numel, dtype=torch.float32, device=values.device)
    out[decode_index(code, ctx.numel)] = values.float()
    return out


def _check_keep(density: float | None, k: int | None) -> tuple[float | None, int | None]:
    """Exactly one of density and k; neither means the default density 0.01."""
    if density is None and k is None:
        return 0.01, None
    if density is not None and k is not None:
        raise ValueError(f"give exactly one of density or k, got density={density!r}, k={k!r}")
    if k is not None:
        return None, check_int("k", k, low=1)
    return check_fraction("density", density), None


class TopK(Compressor):
    """Keep the k entries of largest magnitude (Aji and Heafield 2017; Stich et al. 2018).

    Biased: pair it with ErrorFeedback. Ties at the k-th magnitude are broken by
    ``torch.topk`` (deterministic on CPU for a given input).
    """

    kind = "topk"
    needs_error_feedback = True
    folds_finite_check = True  # a NaN or inf magnitude is among the k largest

    def __init__(self, *, density: float | None = None, k: int | None = None, seed: int = 0):
        super().__init__(seed=seed)
        self.density, self.k = _check_keep(density, k)

    def config(self) -> dict:
        return {"density": self.density, "k": self.k, "seed": self.seed}

    def _encode(self, x: torch.Tensor, name: str, step: int) -> tuple[Payload, dict]:
        flat = x.reshape(-1)
        k = keep_count(flat.numel(), self.density, self.k, name)
        magnitudes, index = torch.topk(flat.abs(), k, sorted=False)  # NaN ranks above inf
        require_finite(magnitudes.sum(), x, name)
        return sparse_payload(flat[index], index, flat.numel()), {}

    def _decode(self, payload: Payload, ctx: Ctx) -> torch.Tensor:
        return scatter(payload, ctx)


class RandomK(Compressor):
    """Keep k entries chosen at random from a seed both sides derive from (seed, name, step).

    Only the values travel. With ``rescale=True`` they are multiplied by numel/k,
    which makes the estimate unbiased (at a higher variance). With ``shared_seed=s`` the
    positions come from (s, name, step) instead of the worker's own ``seed``: every worker
    given the same ``s`` keeps the same positions, so their payloads add up entry by entry
    (``summable``) and can be all-reduced. Positions come from ``sample_positions``.
    """

    kind = "randomk"
    stochastic = True
    needs_error_feedback = True

    def __init__(self, *, density: float | None = None, k: int | None = None,
                 rescale: bool = False, shared_seed: int | None = None, seed: int = 0):
        super().__init__(seed=seed)
        self.density, self.k = _check_keep(density, k)
        self.rescale = bool(rescale)
        self.shared_seed = None if shared_seed is None else check_seed("shared_seed",
                                                                       shared_seed)
        self.unbiased = self.rescale
        self.needs_error_feedback = not self.rescale
        self.summable = self.shared_seed is not None

    def config(self) -> dict:
        return {"density": self.density, "k": self.k, "rescale": self.rescale,
                "shared_seed": self.shared_seed, "seed": self.seed}

    @staticmethod
    def positions(numel: int, k: int, seed: int,
                  device: torch.device | str = "cpu") -> torch.Tensor:
        """The k distinct positions (int64, ascending) drawn from ``seed``: sender and
        receiver agree (see ``sample_positions``)."""
        return sample_positions(numel, k, seed).to(device)

    def _encode(self, x: torch.Tensor, name: str, step: int) -> tuple[Payload, dict]:
        flat = x.reshape(-1)
        k = keep_count(flat.numel(), self.density, self.k, name)
        base = self.seed if self.shared_seed is None else self.shared_seed
        seed = derive_seed(base, name, step)
        values = flat[self.positions(flat.numel(), k, seed, flat.device)]
        if self.rescale:
            values = values * (flat.numel() / k)
        return (values,), {"k": k, "seed": seed}

    def _decode(self, payload: Payload, ctx: Ctx) -> torch.Tensor:
        (values,) = payload
        out = torch.zeros(ctx.numel, dtype=torch.float32, device=values.device)
        out[self.positions(ctx.numel, ctx.meta["k"], ctx.meta["seed"], values.device)] = values
        return out


def sample_positions(numel: int, k: int, seed: int) -> torch.Tensor:
    """k distinct positions of [0, numel), a uniform k-subset, ascending (int64, CPU).

    O(k log k), never O(numel), while k <= numel / 4: draw about -numel*ln(1 - k/numel)
    positions with replacement (the count that expects k distinct ones), add rounds while
    fewer than k are distinct, then keep k of the u distinct ones, chosen by a random
    permutation of u. Given their number, the distinct values of i.i.d. uniform draws are
    a uniform u-subset, so the k kept are a uniform k-subset. Denser picks use
    ``randperm(numel)[:k]``. Same (numel, k, seed), same positions, on every machine.
    """
    gen = generator(seed)
    if 4 * k > numel:
        return torch.randperm(numel, generator=gen)[:k].sort().values
    expected = -numel * math.log1p(-k / numel)  # draws with k distinct values on average
    draws = torch.randint(0, numel, (math.ceil(1.01 * expected) + 16,), generator=gen)
    distinct = torch.unique(draws)  # sorted
    while distinct.numel() < k:
        more = torch.randint(0, numel, (2 * (k - distinct.numel()) + 16,), generator=gen)
        distinct = torch.unique(torch.cat([distinct, more]))
    if distinct.numel() == k:
        return distinct
    keep = torch.randperm(distinct.numel(), generator=gen)[:k].sort().values
    return distinct[keep]


class Threshold(Compressor):
    """Send every entry with |g| > threshold (Strom 2015); the count varies per call."""

    kind = "threshold"
    needs_error_feedback = True
    folds_finite_check = True  # NaN and inf entries are among the sent ones
    fixed_size = False

    def __init__(self, *, threshold: float = 0.01, seed: int = 0):
        super().__init__(seed=seed)
        self.threshold = check_real("threshold", threshold, low=0.0)

    def config(self) -> dict:
        return {"threshold": self.threshold, "seed": self.seed}

    def _encode(self, x: torch.Tensor, name: str, step: int) -> tuple[Payload, dict]:
        flat = x.reshape(-1)
        # not (|g| <= t) also picks NaN, so the sum of what is sent sees every bad entry
        index = torch.le(flat.abs(), self.threshold).logical_not_().nonzero().reshape(-1)
        values = flat[index]
        require_finite(values.sum(), x, name)
        return sparse_payload(values, index, flat.numel()), {}

    def _decode(self, payload: Payload, ctx: Ctx) -> torch.Tensor:
        return scatter(payload, ctx)
