"""Data-parallel training with compressed gradients: an in-process simulation of N workers.

    hist = simulate(lab_model(task), task, workers=4, compressor="topk", density=0.001,
                    error_feedback=True, epochs=30)
    hist.test_acc[-1], hist.compression_ratio

Every round (one optimizer step) each worker takes its own shard of the global batch,
computes the gradient of its replica and compresses every parameter's gradient with its own
compressor (own residuals), and the workers exchange what the maths allows:

* all-reduce where payloads sum: fp32 as is, the fp16/bf16 casts (divided by N, summed in
  the cast dtype, as PyTorch's fp16 hook) and random-k with one seed for all workers (the
  same positions everywhere, so the values sum);
* PowerSGD's two all-reduces (Vogels et al.): P = sum_k M_k Q, orthogonalize, Q = mean_k
  M_k^T P, one shared warm-start Q and error feedback against the shared P Q^T;
* all-gather of framed payloads elsewhere (top-k, threshold, DGC, QSGD, TernGrad, sign): a
  sum of sparse or quantized payloads is not one, so each worker decodes all N and averages
  them in rank order.

Bytes per worker per round: the payload it uploads (``up_bytes_per_round``) and what it
puts on and takes off the wire for the collective used (``wire_sent_bytes_per_round``,
``wire_recv_bytes_per_round``): a ring all-reduce moves 2(N-1)/N of the buffer each way; an
all-gather sends the worker's own message (the 8-byte length, then its frame padded to the
longest) and receives the N-1 others. The simulation counts one bucket (all parameters in
one frame), as DDP builds for models under its first bucket's 1 MiB.

All replicas apply the same update and stay identical, so one model object stands for all
of them; the real multi-process version (``odtkit.distributed.ddp``: DDP communication hooks
on gloo) runs the same exchange and checks that with separate processes.

    torchrun --nproc_per_node=2 -m odtkit.distributed --compressor topk --arg density=0.01
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .._checks import check_positive_int, check_seed
from ..training import (
    Batch,
    History,
    Loop,
    TrainConfig,
    batch_at,
    check_model,
    check_task,
    draw_order,
    steps_per_epoch,
)
from ._common import (
    allreduce_wire_bytes,
    check_compressor_vs_optimizer,
    dense_bytes,
    dgc_workers,
    exchange_of,
    make_compressor,
    renamed_attribute,
    set_epoch,
    worker_settings,
)
from .collectives import Exchanged, exchange

__all__ = ["DistHistory", "simulate", "global_batches"]

# old attribute -> (new attribute, how to get the old value from the new one)
_RENAMED = {
    "bytes_up": ("up_bytes_per_round", list),
    "bytes_total": ("total_bytes_per_round", list),
    "compute_s": ("compute_s_per_round", sum),
    "compress_s": ("compress_s_per_round", sum),
}
_WIRE = ("wire_sent_bytes_per_round", "wire_recv_bytes_per_round")


@dataclass(frozen=True, repr=False)
class DistHistory(History):
    """History per epoch plus communication and time per round (one round = one step).

    ``up_bytes_per_round[r]``: the payload one worker compressed its gradients to in
    round r (mean over workers; equal for fixed-size compressors).
    ``total_bytes_per_round[r]``: all workers' payloads summed. ``dense_bytes``: one fp32
    gradient, the payload without compression. ``exchange``: the collective ('allreduce',
    'powersgd' or 'allgather'); ``wire_sent_bytes_per_round`` /
    ``wire_recv_bytes_per_round``: what one worker put on and took off the wire for it
    (mean over workers; see the module docstring), the bytes a link carries.
    ``compute_s_per_round``: one worker's forward + backward; ``compress_s_per_round``:
    one worker's share of the exchange's compress and decompress time.
    """

    up_bytes_per_round: list[float] = field(default_factory=list)
    total_bytes_per_round: list[int] = field(default_factory=list)
    compressor: str = "none"
    workers: int = 1
    dense_bytes: int = 0
    compute_s_per_round: list[float] = field(default_factory=list)
    compress_s_per_round: list[float] = field(default_factory=list)
    exchange: str = "allgather"
    wire_sent_bytes_per_round: list[float] = field(default_factory=list)
    wire_recv_bytes_per_round: list[float] = field(default_factory=list)
    model: nn.Module | None = field(default=None, compare=False)  # the trained replica

    def __post_init__(self) -> None:
        super().__post_init__()
        rounds = {name: len(getattr(self, name)) for name, _ in _RENAMED.values()}
        rounds.update({name: len(getattr(self, name)) for name in _WIRE})
        timed = [n for n in rounds if n.endswith("_s_per_round") and rounds[n]]  # may be empty
        wire = [n for n in _WIRE if rounds[n]]  # may be empty (histories saved before them)
        if len({rounds[n] for n in ("up_bytes_per_round", "total_bytes_per_round", *timed,
                                    *wire)}) > 1:
            raise ValueError(f"per-round lists must have one entry per round (the time lists "
                             f"may be empty), got lengths {rounds}")

    def __getattr__(self, name: str) -> Any:  # old names: deprecated, they warn
        return renamed_attribute(self, name, _RENAMED)

    @property
    def rounds(self) -> int:
        """Optimizer steps (rounds of exchange) in the run."""
        return len(self.up_bytes_per_round)

    def comm_dict(self) -> dict[str, Any]:
        """Communication and time numbers as plain values (for JSON)."""
        out: dict[str, Any] = {"compressor": self.compressor, "workers": self.workers,
                               "dense_bytes": self.dense_bytes, "exchange": self.exchange}
        out.update({name: list(getattr(self, name)) for name, _ in _RENAMED.values()})
        out.update({name: list(getattr(self, name)) for name in _WIRE})
        return out

    @property
    def dense_wire_bytes(self) -> float:
        """What one worker sends per round for an uncompressed fp32 ring all-reduce."""
        return allreduce_wire_bytes(self.dense_bytes, self.workers)

    @property
    def wire_ratio(self) -> float:
        """Dense fp32 all-reduce wire bytes over the wire bytes this run sent, per worker
        over the whole run (headers, lengths and padding included)."""
        sent = sum(self.wire_sent_bytes_per_round)
        dense = self.dense_wire_bytes * len(self.wire_sent_bytes_per_round)
        return dense / sent if sent else (1.0 if not dense else math.inf)

    @property
    def total_bytes(self) -> int:
        """Every payload byte all workers sent over the whole run."""
        return int(sum(self.total_bytes_per_round))

    @property
    def compression_ratio(self) -> float:
        """Dense fp32 bytes over the bytes actually sent, per worker over the whole run."""
        sent = sum(self.up_bytes_per_round)
        return self.dense_bytes * self.rounds / sent if sent else math.inf

    def __repr__(self) -> str:
        base = History.__repr__(self)[len("History("):-1]
        return (f"DistHistory({self.compressor}, {self.workers} workers, {base}, "
                f"{self.rounds} rounds, {self.compression_ratio:.1f}x fewer bytes)")


# ------------------------------------------------------------------------- data

def global_batches(num_samples: int, *, workers: int, batch_size: int, epochs: int,
                   seed: int) -> Iterator[tuple[int, int, torch.Tensor]]:
    """(epoch, step, indices (workers * batch_size,)) for every round; worker w takes
    ``indices[w * batch_size:(w + 1) * batch_size]``. The data order of the training loop
    (``odtkit.training``): one permutation per epoch from a Generator seeded by ``seed``;
    the incomplete last global batch is dropped. Arguments are checked at the call."""
    for name, value in (("num_samples", num_samples), ("workers", workers),
                        ("batch_size", batch_size), ("epochs", epochs)):
        check_positive_int(name, value)
    check_seed("seed", seed)
    steps = steps_per_epoch(num_samples, batch_size, workers=workers, drop_last=True)
    return _batches(num_samples, workers * batch_size, steps, epochs, seed)


def _batches(n: int, size: int, steps: int, epochs: int,
             seed: int) -> Iterator[tuple[int, int, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        perm = draw_order(gen, n)
        for step in range(steps):
            yield epoch, step, batch_at(perm, step, size)


# ------------------------------------------------------------------------- simulation

def simulate(
    model: nn.Module,
    task: Any,
    *,
    workers: int = 4,
    compressor: str | Callable[[], Any] = "none",
    error_feedback: bool = False,
    epochs: int = 1,
    batch_size: int = 16,
    lr: float = 0.05,
    optimizer: str = "sgd-m",
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    seed: int = 0,
    max_steps: int | None = None,
    **compressor_kwargs: Any,
) -> DistHistory:
    """Train a copy of ``model`` with ``workers`` simulated data-parallel workers.

    ``batch_size`` is per worker (the global batch is workers x batch_size). Worker w's
    compressor gets seed ``seed + w``; ``compressor_kwargs`` (density=, rank=, ...) go to
    ``odt.compress.get``. ``model`` itself is not changed: the trained replica is
    ``history.model``. Same arguments, same numbers.
    """
    check_positive_int("workers", workers)
    config = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, optimizer=optimizer,
                         momentum=momentum, weight_decay=weight_decay, seed=seed,
                         max_steps=max_steps, drop_last=True)
    check_task(task)
    check_model(model, task)
    compressor_kwargs = dgc_workers(compressor, compressor_kwargs, workers)
    codecs = [make_compressor(compressor, error_feedback=error_feedback, seed=w_seed, **w_kw)
              for w_seed, w_kw in (worker_settings(compressor, seed, w, compressor_kwargs)
                                   for w in range(workers))]
    check_compressor_vs_optimizer(codecs[0], optimizer)
    torch.manual_seed(seed)
    replica = copy.deepcopy(model).train()
    loop = _Workers(replica, task, config, workers=workers, label="simulate")
    loop.codecs = codecs
    history = loop.run()
    return DistHistory(**history.as_dict(), **loop.comm,
                       compressor=getattr(codecs[0], "kind", str(compressor)), workers=workers,
                       dense_bytes=dense_bytes(replica), exchange=exchange_of(codecs[0]),
                       model=replica)


class _Workers(Loop):
    """N workers in one process: one replica stands for all (they stay identical).

    Every worker computes its shard's gradient from the same buffers (DDP broadcasts rank
    0's before each forward); rank 0's updated buffers are kept. ``exchange`` compresses
    each worker's gradients with its own codec and combines them as the collective would.
    """

    codecs: Sequence[Any] = ()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        self.comm: dict[str, list] = {name: [] for name, _ in _RENAMED.values()}
        self.comm.update({name: [] for name in _WIRE})
        self.grads: list[list[torch.Tensor]] = []
        self.buffers: list[torch.Tensor] = []
        self.kept: list[torch.Tensor] = []

    def compute_shard(self, batch: Batch, worker: int) -> tuple[float, int, int]:
        buffers = list(self.model.buffers())
        if worker == 0:
            self.grads, self.buffers = [], [b.detach().clone() for b in buffers]
        else:  # every worker starts from the same (rank 0's) buffers
            for b, saved in zip(buffers, self.buffers, strict=True):
                b.copy_(saved)
        out = super().compute_shard(batch, worker)
        self.grads.append([torch.zeros_like(p) if p.grad is None else p.grad.detach().clone()
                           for _, p in self.named])
        if worker == 0:
            self.kept = [b.detach().clone() for b in buffers]
        if worker == self.workers - 1:  # rank 0's updated buffers win
            for b, kept in zip(buffers, self.kept, strict=True):
                b.copy_(kept)
        return out

    def exchange(self, batch: Batch) -> None:
        for codec in self.codecs:
            set_epoch(codec, batch.epoch_progress)
        out: Exchanged = exchange(self.codecs, [name for name, _ in self.named], self.grads)
        for (_, p), g in zip(self.named, out.averaged, strict=True):
            p.grad = g.to(p.dtype)
        self.comm["up_bytes_per_round"].append(sum(out.payload_bytes) / self.workers)
        self.comm["total_bytes_per_round"].append(int(sum(out.payload_bytes)))
        self.comm["wire_sent_bytes_per_round"].append(out.wire_sent_bytes)
        self.comm["wire_recv_bytes_per_round"].append(out.wire_recv_bytes)

    def after_step(self, batch: Batch) -> None:
        self.comm["compute_s_per_round"].append(self.step_compute_s / self.workers)
        self.comm["compress_s_per_round"].append(self.step_exchange_s / self.workers)


def _exchange(codecs: Sequence[Any], names: Sequence[str],
              grads: Sequence[Sequence[torch.Tensor]]) -> tuple[list[torch.Tensor], list[int]]:
    """(averaged gradients, payload bytes per worker) of one round's ``exchange``."""
    out = exchange(codecs, names, grads)
    return out.averaged, out.payload_bytes
