"""PowerSGD (Vogels et al., NeurIPS 2019): rank-r power iteration, warm-started per tensor."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from .._checks import check_choice, check_int, check_real
from .base import FP32_MAX, Compressor, Ctx, check_tensor
from .wire import Payload, derive_seed, generator


def matrix_shape(shape: tuple[int, ...]) -> tuple[int, int]:
    """The n x m view PowerSGD compresses: first dim x the rest (conv: out x in*kh*kw)."""
    return shape[0], math.prod(shape[1:])


class PowerSGD(Compressor):
    """One step of subspace iteration per call: P = M Q, orthogonalize P, Q = M^T P.

    A tensor of shape (n, ...) is viewed as an n x m matrix M and sent as P (n x r)
    and Q (m x r), r(n+m) fp32 numbers, decoded as P Q^T. Q is kept per name and
    warm-starts the next call (state: one fp32 (m, r) Q per name, first drawn from
    N(0, 1) with a seed from (seed, name)). 1-D tensors and matrices where rank r
    saves less than ``min_compression_rate`` (n*m <= rate * r(n+m)) travel as fp32,
    as in the paper. A rank above min(n, m) raises unless ``rank_too_large="dense"``.
    M and Q are scaled by powers of two inside the products (exact), so only a column of
    M with L2 norm near float32's maximum (it bounds Q and P Q^T) is refused.
    Biased: the paper always uses error feedback (wrap in ErrorFeedback).

    Between workers the paper all-reduces instead (``project``, ``finish``: P = sum_k M_k Q,
    orthogonalize, Q = mean_k M_k^T P), so every worker shares one warm-start Q and one
    approximation; ``odtkit.distributed`` does that, ``compress`` is the one-worker form.
    """

    kind = "powersgd"
    needs_error_feedback = True
    TOO_LARGE = ("error", "dense")

    def __init__(self, *, rank: int = 2, min_compression_rate: float = 1.0,
                 rank_too_large: str = "error", start_iter: int = 0, seed: int = 0):
        super().__init__(seed=seed)
        self.rank = check_int("rank", rank, low=1)
        self.start_iter = check_int("start_iter", start_iter, low=0)
        self.min_compression_rate = check_real("min_compression_rate", min_compression_rate,
                                               low=1.0)
        self.rank_too_large = check_choice("rank_too_large policy", rank_too_large,
                                           self.TOO_LARGE)
        self._q: dict[str, torch.Tensor] = {}

    def config(self) -> dict[str, Any]:
        return {"rank": self.rank, "min_compression_rate": self.min_compression_rate,
                "rank_too_large": self.rank_too_large, "start_iter": self.start_iter,
                "seed": self.seed}

    def mode(self, shape: tuple[int, ...], name: str = "tensor", step: int | None = None) -> str:
        """'lowrank' or 'dense': how a tensor of ``shape`` travels at ``step`` (both sides
        compute it; without a step, after the first ``start_iter`` steps)."""
        if len(shape) <= 1 or (step is not None and step < self.start_iter):
            return "dense"
        n, m = matrix_shape(shape)
        if self.rank > min(n, m):
            if self.rank_too_large == "dense":
                return "dense"
            raise ValueError(
                f"rank={self.rank} exceeds min(n, m)={min(n, m)} of tensor {name!r} viewed as "
                f"{n} x {m}; use rank <= {min(n, m)} or rank_too_large='dense'"
            )
        if n * m <= self.min_compression_rate * self.rank * (n + m):
            return "dense"
        return "lowrank"

    def _warm_q(self, name: str, m: int, device: torch.device) -> torch.Tensor:
        q = self._q.get(name)
        if q is None:
            g = generator(derive_seed(self.seed, name, -1), device)
            return torch.randn(m, self.rank, generator=g, device=device)
        if q.shape != (m, self.rank):
            raise ValueError(
                f"tensor {name!r} changed shape: warm-start Q is {tuple(q.shape)}, need "
                f"{(m, self.rank)}; call reset() between models or use distinct names"
            )
        return q

    def _encode(self, x: torch.Tensor, name: str, step: int) -> tuple[Payload, dict]:
        shape = tuple(x.shape)
        if self.mode(shape, name, step) == "dense":
            return (x.reshape(-1).clone(),), {"mode": "dense"}
        n, m = matrix_shape(shape)
        p, q = power_step([x.reshape(n, m)], self._warm_q(name, m, x.device))
        self._check_range(p, q, x.reshape(n, m), name)
        self._q[name] = q.clone()
        return (p.contiguous(), q.contiguous()), {"mode": "lowrank"}

    def _check_range(self, p: torch.Tensor, q: torch.Tensor, matrix: torch.Tensor,
                     name: str) -> None:
        """Refuse factors that overflow float32: Q, and P Q^T, are bounded by the column
        norms of M, so this happens only for columns of L2 norm near 3.4e38."""
        peak = float(q.abs().max())
        if math.isfinite(peak) and math.sqrt(self.rank) * peak * 1.001 < FP32_MAX:
            return  # every |(P Q^T)_ij| <= ||Q_j||_2 <= sqrt(r) max|Q|
        if math.isfinite(peak) and bool(low_rank_product(p, q).isfinite().all()):
            return
        worst = float(torch.linalg.vector_norm(matrix, dim=0, dtype=torch.float64).max())
        raise ValueError(
            f"tensor {name!r} viewed as {matrix.shape[0]} x {matrix.shape[1]} has a column of "
            f"L2 norm {worst:.4g}: its rank-{self.rank} factors P Q^T exceed the float32 "
            f"maximum {FP32_MAX:.4g}; scale or clip the gradient down")

    # -- the all-reduce form: every worker holds the same warm-start Q -------------
    def exchange_mode(self, shape: tuple[int, ...], name: str) -> str:
        """How ``name`` travels in this round of the all-reduce form ('lowrank' or 'dense')."""
        return self.mode(tuple(shape), name, self._steps.get(name, 0))

    def project(self, matrix: torch.Tensor, name: str) -> torch.Tensor:
        """One worker's first message, M_k Q: (n, m) matrix -> (n, r), with the shared
        warm-start Q scaled by a power of two (P is orthogonalized: its scale is lost)."""
        q = self._warm_q(name, matrix.shape[1], matrix.device)
        p = matrix @ _ldexp(q, -_exponent(float(q.abs().max())))
        if not bool(p.isfinite().all()):
            self._check_range(p, q, matrix, name)  # names the column that overflows
        return p

    def finish(self, name: str, p: torch.Tensor, q: torch.Tensor,
               matrix: torch.Tensor) -> torch.Tensor:
        """After the second all-reduce: ``p`` orthonormal (n, r), ``q`` = mean_k M_k^T P
        (m, r). Keeps Q as the next warm start, advances the step of ``name`` and returns
        the shared approximation P Q^T (n, m). ``matrix`` (this worker's) names an overflow."""
        self._check_range(p, q, matrix, name)
        self._q[name] = q.clone()
        self._steps[name] = self._steps.get(name, 0) + 1
        return low_rank_product(p, q)

    def skip(self, name: str) -> None:
        """A round where ``name`` travelled dense (all-reduced as is): advance its step."""
        self._steps[name] = self._steps.get(name, 0) + 1

    def allreduce(self, tensors: Sequence[torch.Tensor], name: str) -> torch.Tensor:
        """The paper's multi-worker step in one process: P = sum_k M_k Q, orthogonalize,
        Q = mean_k M_k^T P; every worker gets the same P Q^T (returned), which by linearity
        equals compressing the mean. Each worker sends P then Q (``r(n+m)`` numbers)."""
        if not tensors:
            raise ValueError(f"allreduce of {name!r} needs at least one worker's tensor")
        xs = [check_tensor(t, name).detach().float() for t in tensors]
        shape = tuple(xs[0].shape)
        if any(tuple(x.shape) != shape for x in xs):
            raise ValueError(f"workers disagree on the shape of {name!r}: "
                             f"{sorted({tuple(x.shape) for x in xs})}")
        if self.exchange_mode(shape, name) == "dense":
            self.skip(name)
            return torch.stack(xs).mean(0).to(tensors[0].dtype)
        ms = [x.reshape(matrix_shape(shape)) for x in xs]
        p = orthogonalize(torch.stack([self.project(mk, name) for mk in ms]).sum(0))
        out = self.finish(name, p, _mean([mk.T @ p for mk in ms]), ms[0])
        return out.reshape(shape).to(tensors[0].dtype)

    def _decode(self, payload: Payload, ctx: Ctx) -> torch.Tensor:
        if ctx.meta["mode"] == "dense":
            return payload[0].float()
        p, q = payload
        return low_rank_product(p.float(), q.float())

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "q": {k: v.clone() for k, v in self._q.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self._q = {k: v.clone().float() for k, v in state["q"].items()}

    def reset(self) -> None:
        super().reset()
        self._q = {}


def power_step(matrices: Sequence[torch.Tensor],
               q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """P = orthogonalize(mean_k M_k Q), Q' = mean_k M_k^T P for (n, m) matrices M_k, (m, r) Q.

    M and Q are first divided by powers of two near their largest magnitudes (exact in
    floating point; P does not depend on their scale), so M Q cannot overflow; Q' is
    scaled back and overflows only if its true value is above float32's range.
    """
    e_m = _exponent(max(_peak(mk) for mk in matrices))
    scaled = [_ldexp(mk, -e_m) for mk in matrices]
    q = _ldexp(q, -_exponent(float(q.abs().max())))
    p = orthogonalize(_mean([mk @ q for mk in scaled]))  # (n, r)
    return p, _ldexp(_mean([mk.T @ p for mk in scaled]), e_m)  # (m, r)


def low_rank_product(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """P Q^T, (n, r) x (m, r) -> (n, m), with Q scaled by a power of two during the product
    so that partial sums stay in range whenever the result does."""
    e_q = _exponent(float(q.abs().max()))
    return _ldexp(p @ _ldexp(q, -e_q).T, e_q)


def _mean(tensors: list[torch.Tensor]) -> torch.Tensor:
    return tensors[0] if len(tensors) == 1 else torch.stack(tensors).mean(0)


def _exponent(peak: float) -> int:
    """e with peak / 2**e in [0.5, 1); 0 for a zero or non-finite peak, and for a peak in
    [2**-40, 2**40], where products of such factors can neither overflow nor vanish in
    float32, so nothing is scaled (no extra pass over the matrix)."""
    if not (peak > 0 and math.isfinite(peak)) or 2.0**-40 <= peak <= 2.0**40:
        return 0
    return math.frexp(peak)[1]


def _peak(t: torch.Tensor) -> float:
    """max |t| in one pass (no |t| temporary)."""
    low, high = torch.aminmax(t)
    return max(-float(low), float(high))


def _ldexp(t: torch.Tensor, e: int) -> torch.Tensor:
    """t * 2**e in two exact steps (2**128 itself is beyond float32)."""
    if e == 0:
        return t
    half = e // 2
    return t * (2.0 ** half) * (2.0 ** (e - half))


def orthogonalize(p: torch.Tensor) -> torch.Tensor:
    """Orthonormal columns spanning p's (reduced QR; the paper uses Gram-Schmidt).
    (n, r) -> (n, r)"""
    return torch.linalg.qr(p, mode="reduced").Q
