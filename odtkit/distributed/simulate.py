"""Data-parallel training with compressed gradients: an in-process simulation of N workers.

    hist = simulate(lab_model(task), task, workers=4, compressor="topk", density=0.001,
                    error_feedback=True, epochs=30)
    hist.test_acc[-1], hist.compression_ratio

Every round (one optimizer step) each worker takes its own shard of the global batch,
computes the gradient of its replica, compresses every parameter's gradient with its own
compressor (own residuals, own seed), and all workers exchange the payloads. The exchange
is an all-gather of compressed payloads, as real sparse and quantized systems do (a sum of
compressed tensors is not compressed, so a ring all-reduce does not apply): each worker
sends its payload once (``bytes_up``) and receives the other N-1 payloads; every worker
decompresses all N and averages them in rank order, so all replicas apply the same update
and stay identical (two consequences of the all-gather: PowerSGD approximates each worker's
gradient alone, where the paper all-reduces P and Q into one shared approximation, same
bytes; signSGD's decoded signs are averaged, not majority-voted). One model object stands
for all replicas because they are identical; the real multi-process version
(``odtkit.distributed.ddp``: DDP communication hooks on gloo) checks that with separate
processes.

    torchrun --nproc_per_node=2 -m odtkit.distributed --compressor topk --arg density=0.01
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from .._checks import check_positive_int
from ..training import History, check_task, evaluate
from ..training.optim import check_optimizer, make_optimizer
from ._common import (
    average,
    check_compressor_vs_optimizer,
    dense_bytes,
    dgc_workers,
    make_compressor,
    set_epoch,
)

__all__ = ["DistHistory", "simulate", "global_batches"]


@dataclass(frozen=True, repr=False)
class DistHistory(History):
    """History per epoch plus communication per round (one round = one optimizer step).

    ``bytes_up[r]``: payload bytes one worker sent in round r (mean over workers; equal for
    fixed-size compressors). ``bytes_total[r]``: all workers' uplinks summed. With an
    all-gather each worker also receives ``bytes_total - bytes_up``. ``dense_bytes``: one
    fp32 gradient, what a worker sends per round without compression.
    """

    bytes_up: list[float] = field(default_factory=list)
    bytes_total: list[int] = field(default_factory=list)
    compressor: str = "none"
    workers: int = 1
    dense_bytes: int = 0
    compute_s: float = 0.0  # one worker's forward + backward, summed over rounds
    compress_s: float = 0.0  # one worker's compress + decompress of all N payloads, summed
    model: nn.Module | None = field(default=None, compare=False)  # the trained replica

    def __post_init__(self) -> None:
        super().__post_init__()
        if len(self.bytes_up) != len(self.bytes_total):
            raise ValueError(f"bytes_up has {len(self.bytes_up)} rounds but bytes_total "
                             f"{len(self.bytes_total)}")

    def comm_dict(self) -> dict[str, Any]:
        """Communication numbers as plain values (for JSON)."""
        return {"compressor": self.compressor, "workers": self.workers,
                "dense_bytes": self.dense_bytes, "bytes_up": list(self.bytes_up),
                "bytes_total": list(self.bytes_total), "compute_s": self.compute_s,
                "compress_s": self.compress_s}

    @property
    def total_bytes(self) -> int:
        """Every payload byte all workers sent over the whole run."""
        return int(sum(self.bytes_total))

    @property
    def compression_ratio(self) -> float:
        """Dense fp32 bytes over the bytes actually sent, per worker over the whole run."""
        sent = sum(self.bytes_up)
        return self.dense_bytes * len(self.bytes_up) / sent if sent else math.inf

    def __repr__(self) -> str:
        base = History.__repr__(self)[len("History("):-1]
        return (f"DistHistory({self.compressor}, {self.workers} workers, {base}, "
                f"{len(self.bytes_up)} rounds, {self.compression_ratio:.1f}x fewer bytes)")


# ------------------------------------------------------------------------- data

def global_batches(num_samples: int, *, workers: int, batch_size: int, epochs: int,
                   seed: int) -> Iterator[tuple[int, int, torch.Tensor]]:
    """(epoch, step, indices (workers * batch_size,)) for every round; worker w takes
    ``indices[w * batch_size:(w + 1) * batch_size]``. One permutation per epoch from a
    Generator seeded by ``seed``; the incomplete last global batch is dropped."""
    per_round = workers * batch_size
    steps = num_samples // per_round
    if steps == 0:
        raise ValueError(f"{workers} workers x batch_size {batch_size} = {per_round} samples "
                         f"per round exceeds the {num_samples} training samples; lower them")
    gen = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        perm = torch.randperm(num_samples, generator=gen)
        for step in range(steps):
            yield epoch, step, perm[step * per_round:(step + 1) * per_round]


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
    check_positive_int("epochs", epochs)
    check_positive_int("batch_size", batch_size)
    if max_steps is not None:
        check_positive_int("max_steps", max_steps)
    check_optimizer(optimizer)
    check_task(task)
    compressor_kwargs = dgc_workers(compressor, compressor_kwargs, workers)
    codecs = [make_compressor(compressor, error_feedback=error_feedback, seed=seed + w,
                              **compressor_kwargs) for w in range(workers)]
    check_compressor_vs_optimizer(codecs[0], optimizer)
    torch.manual_seed(seed)
    replica = copy.deepcopy(model).train()
    named = [(n, p) for n, p in replica.named_parameters() if p.requires_grad]
    opt = make_optimizer(optimizer, replica.parameters(), lr, momentum, weight_decay)
    per_epoch = History().as_dict()  # empty per-epoch lists, filled as epochs end
    bytes_up: list[float] = []
    bytes_total: list[int] = []
    n = len(task.y_train)
    steps_per_epoch = n // (workers * batch_size)
    timers = {"compute": 0.0, "compress": 0.0}
    epoch_loss = epoch_correct = epoch_seen = 0.0
    epoch_time, rounds = 0.0, 0
    for epoch, step, idx in global_batches(n, workers=workers, batch_size=batch_size,
                                           epochs=epochs, seed=seed):
        started = time.perf_counter()
        buffers = [b.detach().clone() for b in replica.buffers()]
        grads = []
        for w in range(workers):
            shard = idx[w * batch_size:(w + 1) * batch_size]
            if w > 0:  # DDP broadcasts rank 0's buffers: later workers start from the same
                for b, saved in zip(replica.buffers(), buffers, strict=True):
                    b.copy_(saved)
            t0 = time.perf_counter()
            loss, correct = _local_gradients(replica, task.x_train[shard], task.y_train[shard])
            timers["compute"] += (time.perf_counter() - t0) / workers
            grads.append([torch.zeros_like(p) if p.grad is None else p.grad.detach().clone()
                          for _, p in named])
            epoch_loss += loss * len(shard)
            epoch_correct += correct
            epoch_seen += len(shard)
            if w == 0:
                buffers_after = [b.detach().clone() for b in replica.buffers()]
        for b, kept in zip(replica.buffers(), buffers_after, strict=True):
            b.copy_(kept)
        t0 = time.perf_counter()
        for codec in codecs:
            set_epoch(codec, epoch + step / steps_per_epoch)
        averaged, sent = _exchange(codecs, [name for name, _ in named], grads)
        timers["compress"] += (time.perf_counter() - t0) / workers
        for (_, p), g in zip(named, averaged, strict=True):
            p.grad = g.to(p.dtype)
        opt.step()
        bytes_up.append(sum(sent) / workers)
        bytes_total.append(int(sum(sent)))
        rounds += 1
        epoch_time += time.perf_counter() - started
        last = step == steps_per_epoch - 1 or rounds == max_steps
        if last:
            acc = evaluate(replica, task.x_test, task.y_test)
            row = {"loss": epoch_loss / epoch_seen, "train_acc": epoch_correct / epoch_seen,
                   "test_acc": acc, "time_s": epoch_time, "steps": rounds,
                   "samples": (per_epoch["samples"] or [0])[-1] + int(epoch_seen)}
            for key, value in row.items():
                per_epoch[key].append(value)
            epoch_loss = epoch_correct = epoch_seen = 0.0
            epoch_time = 0.0
        if rounds == max_steps:
            break
    return DistHistory(**per_epoch, bytes_up=bytes_up, bytes_total=bytes_total,
                       compressor=getattr(codecs[0], "kind", str(compressor)), workers=workers,
                       dense_bytes=dense_bytes(replica), compute_s=timers["compute"],
                       compress_s=timers["compress"], model=replica)


def _local_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, int]:
    """Forward and backward of one worker's shard; leaves the gradient in ``p.grad``."""
    model.zero_grad(set_to_none=True)
    logits = model(x)  # (b, num_classes)
    loss = F.cross_entropy(logits, y)
    loss.backward()
    return float(loss.detach()), int((logits.argmax(1) == y).sum())


def _exchange(codecs: Sequence[Any], names: Sequence[str],
              grads: Sequence[Sequence[torch.Tensor]]) -> tuple[list[torch.Tensor], list[int]]:
    """All-gather of compressed payloads: per tensor, every worker's decompressed payload
    averaged in worker order. Returns (averaged gradients, payload bytes per worker)."""
    sent = [0] * len(codecs)
    averaged = []
    for i, name in enumerate(names):
        decoded = []
        for w, codec in enumerate(codecs):
            payload, ctx = codec.compress(grads[w][i], name)
            sent[w] += codec.nbytes(payload)
            decoded.append(codec.decompress(payload, ctx))
        averaged.append(average(decoded))
    return averaged, sent
