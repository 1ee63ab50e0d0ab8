"""One round of exchange between N workers held in one process, as the collectives of
``odtkit.distributed.hook`` compute it between processes: all-reduce where payloads sum,
PowerSGD's two all-reduces, all-gather elsewhere (see ``_common.exchange_of``).

Sums run in rank order in the payload's own dtype (an fp16 payload is divided by N and
summed in fp16, as PyTorch's fp16 hook does), so a two-rank all-reduce gives the same bits;
with more ranks gloo's ring may add in another order (float rounding only).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..compress import matrix_shape, orthogonalize
from ..compress.base import check_tensor
from ..compress.frame import frame_nbytes
from ._common import (
    allgather_wire_bytes,
    allreduce_wire_bytes,
    average,
    exchange_of,
    summed,
)

__all__ = ["Exchanged", "exchange", "LENGTH_BYTES"]

LENGTH_BYTES = 8  # the int64 message length an all-gather of frames sends first


@dataclass(frozen=True)
class Exchanged:
    """What one round gave: every worker's averaged gradients (the same for all), and
    bytes: each worker's payload, and what one worker sent and received on the wire."""

    averaged: list[torch.Tensor]
    payload_bytes: list[int]
    wire_sent_bytes: float
    wire_recv_bytes: float


def exchange(codecs: Sequence[Any], names: Sequence[str],
             grads: Sequence[Sequence[torch.Tensor]]) -> Exchanged:
    """Compress worker w's gradients ``grads[w][i]`` (named ``names[i]``) with
    ``codecs[w]`` and combine them as the collective for that compressor would."""
    kind = exchange_of(codecs[0])
    run = {"allgather": _allgather, "allreduce": _allreduce, "powersgd": _powersgd}[kind]
    return run(codecs, names, grads)


def _allgather(codecs: Sequence[Any], names: Sequence[str],
               grads: Sequence[Sequence[torch.Tensor]]) -> Exchanged:
    """Every worker decodes all N payloads and averages them in rank order. Wire: the
    length, then one frame of all tensors padded to the longest worker's."""
    sent = [0] * len(codecs)
    frames: list[list[tuple]] = [[] for _ in codecs]
    averaged = []
    for i, name in enumerate(names):
        decoded = []
        for w, codec in enumerate(codecs):
            payload, ctx = codec.compress(grads[w][i], name)
            sent[w] += codec.nbytes(payload)
            frames[w].append((payload, ctx))
            decoded.append(codec.decompress(payload, ctx))
        averaged.append(average(decoded))
    message = LENGTH_BYTES + max(frame_nbytes(f) for f in frames)
    up, down = allgather_wire_bytes(message, len(codecs))
    return Exchanged(averaged, sent, up, down)


def _allreduce(codecs: Sequence[Any], names: Sequence[str],
               grads: Sequence[Sequence[torch.Tensor]]) -> Exchanged:
    """Payloads divided by N and summed entry by entry, then decoded once."""
    workers = len(codecs)
    sent = [0] * workers
    averaged = []
    for i, name in enumerate(names):
        compressed = [codec.compress(grads[w][i], name) for w, codec in enumerate(codecs)]
        for w, (payload, _) in enumerate(compressed):
            sent[w] += codecs[w].nbytes(payload)
        parts = tuple(summed([payload[j].div(workers) for payload, _ in compressed])
                      for j in range(len(compressed[0][0])))
        averaged.append(codecs[0].decompress(parts, compressed[0][1]))
    wire = allreduce_wire_bytes(sent[0], workers)
    return Exchanged(averaged, sent, wire, wire)


def _powersgd(codecs: Sequence[Any], names: Sequence[str],
              grads: Sequence[Sequence[torch.Tensor]]) -> Exchanged:
    """Vogels et al.'s all-reduce form: M_k = g_k + e_k; P = orthogonalize(sum_k M_k Q);
    Q = mean_k M_k^T P; every worker gets P Q^T and keeps e_k = M_k - P Q^T. Tensors that
    travel dense (vectors, small matrices, the first ``start_iter`` steps) are averaged."""
    workers = len(codecs)
    inner = [getattr(c, "inner", c) for c in codecs]
    sent = 0
    averaged = []
    for i, name in enumerate(names):
        ms = [local_matrix(codecs[w], grads[w][i], name) for w in range(workers)]
        shape = tuple(grads[0][i].shape)
        lowrank = inner[0].exchange_mode(shape, name) == "lowrank"
        if not lowrank:
            shared = summed(ms) / workers
            for c in inner:
                c.skip(name)
            sent += 4 * shared.numel()
        else:
            mats = [m.reshape(matrix_shape(shape)) for m in ms]
            p = orthogonalize(summed([c.project(m, name) for c, m in zip(inner, mats,
                                                                         strict=True)]))
            q = summed([m.T @ p for m in mats]) / workers
            shared = [c.finish(name, p, q, m) for c, m in zip(inner, mats, strict=True)][0]
            sent += 4 * (p.numel() + q.numel())
        for codec, m in zip(codecs, ms, strict=True):
            keep_shared(codec, name, m, shared, lowrank=lowrank)
        averaged.append(shared.reshape(shape))
    wire = allreduce_wire_bytes(sent, workers)
    return Exchanged(averaged, [sent] * workers, wire, wire)


def local_matrix(codec: Any, grad: torch.Tensor, name: str) -> torch.Tensor:
    """This worker's M: the gradient plus its error-feedback residual (fp32, checked)."""
    if codec is not getattr(codec, "inner", codec):
        return codec.add_residual(grad, name)
    return check_tensor(grad, name).detach().float()


def keep_shared(codec: Any, name: str, local: torch.Tensor, shared: torch.Tensor, *,
                lowrank: bool) -> None:
    """Error feedback against the shared approximation: e = M - P Q^T for a low-rank
    tensor; nothing is lost (e = 0) for one that travelled dense."""
    if codec is not getattr(codec, "inner", codec):
        codec.keep_residual(name, local, shared if lowrank else local)
