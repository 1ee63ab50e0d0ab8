"""Sparsifiers: send a few entries. Values travel in fp32, positions as narrow ints.

Index width follows ``wire.index_dtype(numel)``: uint8 up to 256 entries, int16
up to 65,536, int32 up to 2**32, else int64, and is counted in ``nbytes``.
"""

from __future__ import annotations

import torch

from .._checks import check_int, check_real
from .base import Compressor, Ctx, check_fraction, keep_count
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

    def __init__(self, *, density: float | None = None, k: int | None = None, seed: int = 0):
        super().__init__(seed=seed)
        self.density, self.k = _check_keep(density, k)

    def config(self) -> dict:
        return {"density": self.density, "k": self.k, "seed": self.seed}

    def _encode(self, x: torch.Tensor, name: str, step: int) -> tuple[Payload, dict]:
        flat = x.reshape(-1)
        k = keep_count(flat.numel(), self.density, self.k, name)
        _, index = torch.topk(flat.abs(), k, sorted=False)
        return sparse_payload(flat[index], index, flat.numel()), {}

    def _decode(self, payload: Payload, ctx: Ctx) -> torch.Tensor:
        return scatter(payload, ctx)


class RandomK(Compressor):
    """Keep k entries chosen at random from a seed both sides derive from (seed, name, step).

    Only the values travel. With ``rescale=True`` they are multiplied by numel/k,
    which makes the estimate unbiased (at a higher variance).
    """

    kind = "randomk"
    stochastic = True
    needs_error_feedback = True

    def __init__(self, *, density: float | None = None, k: int | None = None,
                 rescale: bool = False, seed: int = 0):
        super().__init__(seed=seed)
        self.density, self.k = _check_keep(density, k)
        self.rescale = bool(rescale)
        self.unbiased = self.rescale
        self.needs_error_feedback = not self.rescale

    def config(self) -> dict:
        return {"density": self.density, "k": self.k, "rescale": self.rescale, "seed": self.seed}

    @staticmethod
    def positions(numel: int, k: int, seed: int,
                  device: torch.device | str = "cpu") -> torch.Tensor:
        """The k distinct positions (int64) drawn from ``seed``: sender and receiver agree."""
        return torch.randperm(numel, generator=generator(seed), device="cpu")[:k].to(device)

    def _encode(self, x: torch.Tensor, name: str, step: int) -> tuple[Payload, dict]:
        flat = x.reshape(-1)
        k = keep_count(flat.numel(), self.density, self.k, name)
        seed = derive_seed(self.seed, name, step)
        values = flat[self.positions(flat.numel(), k, seed, flat.device)]
        if self.rescale:
            values = values * (flat.numel() / k)
        return (values.contiguous(),), {"k": k, "seed": seed}

    def _decode(self, payload: Payload, ctx: Ctx) -> torch.Tensor:
        (values,) = payload
        out = torch.zeros(ctx.numel, dtype=torch.float32, device=values.device)
        out[self.positions(ctx.numel, ctx.meta["k"], ctx.meta["seed"], values.device)] = values
        return out


class Threshold(Compressor):
    """Send every entry with |g| > threshold (Strom 2015); the count varies per call."""

    kind = "threshold"
    needs_error_feedback = True
    fixed_size = False

    def __init__(self, *, threshold: float = 0.01, seed: int = 0):
        super().__init__(seed=seed)
        self.threshold = check_real("threshold", threshold, low=0.0)

    def config(self) -> dict:
        return {"threshold": self.threshold, "seed": self.seed}

    def _encode(self, x: torch.Tensor, name: str, step: int) -> tuple[Payload, dict]:
        flat = x.reshape(-1)
        index = (flat.abs() > self.threshold).nonzero().reshape(-1)
        return sparse_payload(flat[index], index, flat.numel()), {}

    def _decode(self, payload: Payload, ctx: Ctx) -> torch.Tensor:
        return scatter(payload, ctx)
