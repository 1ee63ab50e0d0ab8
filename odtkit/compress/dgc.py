"""Deep Gradient Compression (Lin et al., ICLR 2018), each technique switchable for ablations."""

from __future__ import annotations

import math
from typing import Any

import torch

from .._checks import check_int, check_real
from .base import FP32_MAX, Compressor, Ctx, check_fraction, keep_count, require_finite
from .sparsify import scatter, sparse_payload
from .wire import Payload, derive_seed, generator

WARMUP_START_DENSITY = 0.25


def warmup_density(epoch: float, *, density: float, warmup_epochs: int,
                   start_density: float = WARMUP_START_DENSITY) -> float:
    """The density of epoch ``epoch``: exponential from start to ``density`` over the warm-up.

    With density=0.001 and 4 warm-up epochs: 25%, 6.3%, 1.6%, 0.4%, then 0.1%
    (the paper's 75% -> 93.75% -> 98.4375% -> 99.6% -> 99.9% sparsity).
    """
    stage = math.floor(epoch)
    if warmup_epochs <= 0 or stage >= warmup_epochs or density >= start_density:
        return density
    return start_density * (density / start_density) ** (max(stage, 0) / warmup_epochs)


class DGC(Compressor):
    """Sparsify an accumulated, momentum-corrected gradient; keep the rest locally.

    Per name and call (u: velocity, v: accumulation, both fp32 state):
      local clipping:      g <- g * min(1, clip_norm / (sqrt(N) ||g||))   (N = num_workers)
      momentum correction: u <- m u + g;  v <- v + u      (off: v <- v + g)
      send:                top-k of |v|: a threshold from a ``sample_ratio`` sample of |v|,
                           lowered while too few pass, then exact top-k among the
                           survivors (so at most k go, and exactly the top k when k pass)
      clear:               v <- 0 where sent; momentum masking: also u <- 0 there
    The receiver applies the averaged sparse v with plain SGD (momentum is already in
    it). Clipping is per tensor here (the paper clips the worker's gradient norm).
    u and v are updated in place (``velocity``/``accumulation`` return the live tensors;
    ``state_dict`` copies them); a non-finite gradient is refused before they change.
    ``set_epoch`` drives the warm-up schedule (any unit of progress works).
    """

    kind = "dgc"
    fixed_size = False  # at most k entries: the sampled threshold may pass fewer
    stochastic = True  # the threshold sample
    feedback_builtin = True
    folds_finite_check = True  # the clipping norm, or one sum, before the state is touched

    def __init__(self, *, density: float = 0.001, momentum: float = 0.9,
                 momentum_correction: bool = True, momentum_masking: bool = True,
                 warmup: bool = True, warmup_epochs: int = 4, clip_norm: float | None = None,
                 num_workers: int = 1, sample_ratio: float = 0.01, min_sample: int = 1000,
                 seed: int = 0):
        super().__init__(seed=seed)
        self.density = check_fraction("density", density)
        self.momentum = check_real("momentum", momentum, low=0.0, high=1.0, high_open=True)
        self.momentum_correction = bool(momentum_correction)
        self.momentum_masking = bool(momentum_masking)
        self.warmup = bool(warmup)
        self.warmup_epochs = check_int("warmup_epochs", warmup_epochs, low=0)
        # None switches local clipping off
        self.clip_norm = check_real("clip_norm", clip_norm, low=0.0, low_open=True,
                                    allow_none=True)
        self.num_workers = check_int("num_workers", num_workers, low=1)
        self.sample_ratio = check_fraction("sample_ratio", sample_ratio)
        self.min_sample = check_int("min_sample", min_sample, low=1)
        self.epoch: float = 0.0
        self._u: dict[str, torch.Tensor] = {}
        self._v: dict[str, torch.Tensor] = {}

    def config(self) -> dict[str, Any]:
        keys = ("density", "momentum", "momentum_correction", "momentum_masking", "warmup",
                "warmup_epochs", "clip_norm", "num_workers", "sample_ratio", "min_sample", "seed")
        return {k: getattr(self, k) for k in keys}

    def set_epoch(self, epoch: float) -> None:
        """Move the warm-up schedule to ``epoch`` (0 = first)."""
        self.epoch = check_real("epoch", epoch, low=0.0)

    @property
    def current_density(self) -> float:
        """The density used by the next call (warm-up applied)."""
        if not self.warmup:
            return self.density
        return warmup_density(self.epoch, density=self.density, warmup_epochs=self.warmup_epochs)

    def velocity(self, name: str) -> torch.Tensor:
        """u for ``name`` (zeros before the first call with momentum correction)."""
        return self._state(self._u, name, "velocity")

    def accumulation(self, name: str) -> torch.Tensor:
        """v for ``name``: what was accumulated but not sent yet."""
        return self._state(self._v, name, "accumulation")

    def _state(self, table: dict, name: str, what: str) -> torch.Tensor:
        if name not in table:
            raise KeyError(f"no {what} for {name!r}; known: {sorted(table)}")
        return table[name]

    def clip(self, g: torch.Tensor, name: str = "tensor") -> torch.Tensor:
        """Local gradient clipping with threshold clip_norm / sqrt(num_workers). Refuses a
        non-finite ``g`` (the norm, or a sum without clipping, sees every entry)."""
        if self.clip_norm is None:
            require_finite(g.sum(), g, name)
            return g
        bound = self.clip_norm / math.sqrt(self.num_workers)
        norm = torch.linalg.vector_norm(g)
        if not require_finite(norm, g, name):  # squares overflowed float32
            norm = torch.linalg.vector_norm(g, dtype=torch.float64)
        norm = float(norm)
        return g * (bound / norm) if norm > bound else g

    def _encode(self, x: torch.Tensor, name: str, step: int) -> tuple[Payload, dict]:
        g = self.clip(x.reshape(-1), name)
        v = self._v.get(name)
        if v is not None and v.numel() != g.numel():
            raise ValueError(f"tensor {name!r} changed size from {v.numel()} to {g.numel()}; "
                             "call reset() between models or use distinct names")
        # u and v are updated in place: g is finite, so they turn non-finite only by
        # overflow, and then the largest |v| is inf and among the sent values (below)
        if self.momentum_correction:
            u = self._u.get(name)
            u = g.clone() if u is None else u.mul_(self.momentum).add_(g)
            v = u.clone() if v is None else v.add_(u)
            self._u[name] = u
        else:
            v = g.clone() if v is None else v.add_(g)
        self._v[name] = v
        k = keep_count(g.numel(), self.current_density, None, name)
        index = self._select(v, k, derive_seed(self.seed, name, step))
        values = v[index]
        if not math.isfinite(float(values.sum())) and not bool(v.isfinite().all()):
            self._u.pop(name, None)
            self._v.pop(name, None)
            raise ValueError(
                f"the accumulated gradient of {name!r} overflowed float32 (|v| above "
                f"{FP32_MAX:.4g}), so its accumulation and velocity were cleared; scale or "
                "clip the gradients down (clip_norm=...)")
        payload = sparse_payload(values, index, g.numel())
        v[index] = 0.0
        if self.momentum_correction and self.momentum_masking:
            u[index] = 0.0
        return payload, {"k": k}

    def _select(self, v: torch.Tensor, k: int, seed: int) -> torch.Tensor:
        """At most k positions of large |v|: a threshold from a sample, lowered while fewer
        than k entries pass (up to 8 times by 0.8), then exact top-k among the survivors."""
        mag = v.abs()
        n = mag.numel()
        size = max(self.min_sample, math.ceil(self.sample_ratio * n))
        if size >= n or k >= n:
            return torch.topk(mag, k, sorted=False).indices
        pick = torch.randint(0, n, (size,), generator=generator(seed, v.device), device=v.device)
        k_sample = max(1, math.ceil(k * size / n - 1e-9))
        threshold = float(torch.topk(mag[pick], k_sample, sorted=True).values[-1])
        chosen = (mag >= threshold).nonzero().reshape(-1)
        for _ in range(8):
            if chosen.numel() >= k or threshold == 0.0:
                break
            threshold *= 0.8
            chosen = (mag >= threshold).nonzero().reshape(-1)
        if chosen.numel() > k:  # superset of the top k: exact top-k among the survivors
            chosen = chosen[torch.topk(mag[chosen], k, sorted=False).indices]
        return chosen

    def _decode(self, payload: Payload, ctx: Ctx) -> torch.Tensor:
        return scatter(payload, ctx)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "epoch": self.epoch,
                "u": {k: t.clone() for k, t in self._u.items()},
                "v": {k: t.clone() for k, t in self._v.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.epoch = float(state["epoch"])
        self._u = {k: t.clone() for k, t in state["u"].items()}
        self._v = {k: t.clone() for k, t in state["v"].items()}

    def reset(self) -> None:
        """Clear u, v and step counters (the epoch stays: set it with set_epoch)."""
        super().reset()
        self._u, self._v = {}, {}
