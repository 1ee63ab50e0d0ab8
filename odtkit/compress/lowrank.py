"""PowerSGD (Vogels et al., NeurIPS 2019): rank-r power iteration, warm-started per tensor."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from .._checks import check_choice, check_int, check_real
from .base import Compressor, Ctx, check_tensor
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
    Biased: the paper always uses error feedback (wrap in ErrorFeedback).
    """

    kind = "powersgd"
    needs_error_feedback = True
    TOO_LARGE = ("error", "dense")

    def __init__(self, *, rank: int = 2, min_compression_rate: float = 1.0,
                 rank_too_large: str = "error", seed: int = 0):
        super().__init__(seed=seed)
        self.rank = check_int("rank", rank, low=1)
        self.min_compression_rate = check_real("min_compression_rate", min_compression_rate,
                                               low=1.0)
        self.rank_too_large = check_choice("rank_too_large policy", rank_too_large,
                                           self.TOO_LARGE)
        self._q: dict[str, torch.Tensor] = {}

    def config(self) -> dict[str, Any]:
        return {"rank": self.rank, "min_compression_rate": self.min_compression_rate,
                "rank_too_large": self.rank_too_large, "seed": self.seed}

    def mode(self, shape: tuple[int, ...], name: str = "tensor") -> str:
        """'lowrank' or 'dense': how a tensor of ``shape`` travels (both sides compute it)."""
        if len(shape) <= 1:
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
        if self.mode(shape, name) == "dense":
            return (x.reshape(-1).clone(),), {"mode": "dense"}
        n, m = matrix_shape(shape)
        matrix = x.reshape(n, m)
        p = orthogonalize(matrix @ self._warm_q(name, m, x.device))  # (n, r)
        q = matrix.T @ p  # (m, r)
        self._q[name] = q.clone()
        return (p.contiguous(), q.contiguous()), {"mode": "lowrank"}

    def allreduce(self, tensors: Sequence[torch.Tensor], name: str) -> torch.Tensor:
        """The paper's multi-worker step: P = mean_k M_k Q, orthogonalize, Q = mean_k M_k^T P.

        Each worker sends P then Q (``r(n+m)`` numbers, as ``compress``); every worker
        gets the same P Q^T (returned). By linearity it equals compressing the mean.
        """
        if not tensors:
            raise ValueError(f"allreduce of {name!r} needs at least one worker's tensor")
        xs = [check_tensor(t, name).detach().float() for t in tensors]
        shape = tuple(xs[0].shape)
        if any(tuple(x.shape) != shape for x in xs):
            raise ValueError(f"workers disagree on the shape of {name!r}: "
                             f"{sorted({tuple(x.shape) for x in xs})}")
        step = self._steps.get(name, 0)
        if self.mode(shape, name) == "dense":
            out = torch.stack(xs).mean(0)
        else:
            n, m = matrix_shape(shape)
            ms = [x.reshape(n, m) for x in xs]
            q = self._warm_q(name, m, xs[0].device)
            p = orthogonalize(torch.stack([mk @ q for mk in ms]).mean(0))  # (n, r)
            q = torch.stack([mk.T @ p for mk in ms]).mean(0)  # (m, r)
            self._q[name] = q.clone()
            out = p @ q.T
        self._steps[name] = step + 1
        return out.reshape(shape).to(tensors[0].dtype)

    def _decode(self, payload: Payload, ctx: Ctx) -> torch.Tensor:
        if ctx.meta["mode"] == "dense":
            return payload[0].float()
        p, q = payload
        return p.float() @ q.float().T

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "q": {k: v.clone() for k, v in self._q.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self._q = {k: v.clone().float() for k, v in state["q"].items()}

    def reset(self) -> None:
        super().reset()
        self._q = {}


def orthogonalize(p: torch.Tensor) -> torch.Tensor:
    """Orthonormal columns spanning p's (reduced QR; the paper uses Gram-Schmidt). (n, r) -> (n, r)"""
    return torch.linalg.qr(p, mode="reduced").Q
