"""The one training loop every trainer in odtkit runs.

One definition of the data order (one permutation per epoch from a Generator seeded by
``config.seed``, batches cut from it in order), of a step (per shard: zero the gradients,
forward, loss, a stop at a NaN or infinite loss, backward; then the ``exchange`` hook;
then the optimizer step), of the per-epoch evaluation and of the History bookkeeping.

    Loop(model, task, config).run()                  # odt.train: one worker (+ checkpoints)
    Loop(..., workers=4) with exchange = compress, all-gather, average       # simulate
    Loop(..., workers=4, shards=[rank], forward=ddp_module)   # a DDP rank: DDP's hook exchanges
    Loop(..., indices=client_shard, evaluate=False)  # a federated client's local epochs

Subclasses override the hooks ``before_step``, ``compute_shard``, ``exchange``,
``after_step`` and ``after_epoch``; everything else stays here.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from .._plan_channels import entries_of, frozen_slices
from ..plans import TrainPlan
from .config import TrainConfig
from .history import History, evaluate, model_device
from .mixed import PrecisionRun
from .optim import make_optimizer

__all__ = ["Loop", "LoopState", "Batch", "TrainingDiverged", "steps_per_epoch", "draw_order",
           "batch_at"]


class TrainingDiverged(FloatingPointError):
    """The loss became NaN or infinite; training stopped before that step's update."""

    def __init__(self, message: str, *, step: int, loss: float) -> None:
        super().__init__(message)
        self.step, self.loss = step, loss


@dataclass
class LoopState:
    """Where the loop stands; a checkpoint saves it so a resume continues exactly."""

    epoch: int = 0  # 0-based epoch being run
    step: int = 0  # optimizer steps done within this epoch
    global_step: int = 0
    perm: torch.Tensor | None = None  # this epoch's data order, drawn when it starts
    loss_sum: float = 0.0  # sum over the epoch's samples so far
    correct: int = 0
    seen: int = 0
    elapsed_s: float = 0.0


@dataclass(frozen=True)
class Batch:
    """One optimizer step's global batch: ``indices`` into ``task.x_train``."""

    epoch: int  # 0-based
    step: int  # 0-based, within the epoch
    global_step: int  # steps done before this one
    steps_per_epoch: int
    indices: torch.Tensor  # (workers * batch_size,), fewer in an incomplete last batch

    @property
    def epoch_progress(self) -> float:
        """Epochs done so far as a fraction (what warm-up schedules read)."""
        return self.epoch + self.step / self.steps_per_epoch


def steps_per_epoch(num_samples: int, batch_size: int, *, workers: int = 1,
                    drop_last: bool = False) -> int:
    """Optimizer steps in one epoch of ``num_samples`` with global batches of
    ``workers x batch_size``; raises when that leaves no step at all."""
    size = workers * batch_size
    steps = num_samples // size if drop_last else math.ceil(num_samples / size)
    if steps == 0 and workers > 1:
        raise ValueError(f"{workers} workers x batch_size {batch_size} = {size} samples per "
                         f"round exceeds the {num_samples} training samples; lower them")
    if steps == 0:
        raise ValueError(f"drop_last=True with batch_size={batch_size} > {num_samples} training "
                         "samples leaves no batch at all: lower batch_size or pass "
                         "drop_last=False")
    return steps


def draw_order(gen: torch.Generator, num_samples: int) -> torch.Tensor:
    """An epoch's data order: a permutation of range(num_samples) drawn from ``gen``."""
    return torch.randperm(num_samples, generator=gen)


def batch_at(perm: torch.Tensor, step: int, size: int,
             indices: torch.Tensor | None = None) -> torch.Tensor:
    """Global batch ``step`` of an epoch: positions ``perm[step*size:(step+1)*size]``,
    mapped through ``indices`` (the samples the loop draws from) when given."""
    chunk = perm[step * size:(step + 1) * size]
    return chunk if indices is None else indices[chunk]


class Loop:
    """Trains ``model`` on ``task`` under ``config``; ``run()`` returns the History.

    ``workers`` shards of ``config.batch_size`` make a global batch; this process computes
    the shards listed in ``shards`` (all by default) through ``forward`` (the model by
    default; DDP passes its wrapper). ``indices`` restricts training to those samples of
    ``task.x_train`` (a federated client's shard). ``evaluate=False`` skips the test
    evaluation (test_acc is then NaN). ``label`` names the run in messages. ``plan``: a
    channel-sparse TrainPlan's frozen entries stay bit-identical (``make_optimizer``'s
    masks); the Loop does not apply the plan's ``requires_grad``, its caller does.
    """

    def __init__(self, model: nn.Module, task: Any, config: TrainConfig, *,
                 loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
                 forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 indices: torch.Tensor | None = None, workers: int = 1,
                 shards: Iterable[int] | None = None, evaluate: bool = True,
                 progress: bool = False, label: str = "training",
                 plan: TrainPlan | None = None) -> None:
        if not isinstance(config, TrainConfig):
            raise TypeError(f"config must be an odt.TrainConfig, got {type(config).__name__}")
        if workers > 1 and not config.drop_last:
            raise ValueError(f"{workers} workers share equal shards of each global batch, so "
                             "an incomplete last batch cannot be split: pass a config with "
                             "drop_last=True (got drop_last=False)")
        self.model, self.task, self.config, self.label = model, task, config, label
        self.forward = model if forward is None else forward
        self.loss_fn = F.cross_entropy if loss_fn is None else loss_fn
        self.indices, self.workers = indices, workers
        self.shards = tuple(range(workers) if shards is None else shards)
        self.evaluate, self.progress = evaluate, progress
        self.device = model_device(model)
        self.opt = make_optimizer(config.optimizer, model.parameters(), config.lr,
                                  config.momentum, config.weight_decay,
                                  masks=_masks(model, plan))
        self.precision = PrecisionRun(config.precision or "fp32", model, self.opt,
                                      qas=config.qas, rounding=config.rounding,
                                      seed=config.seed)
        self.gen = torch.Generator().manual_seed(config.seed)  # data order only
        self.num_samples = len(task.y_train) if indices is None else len(indices)
        self.steps_per_epoch = steps_per_epoch(self.num_samples, config.batch_size,
                                               workers=workers, drop_last=config.drop_last)
        self.total_steps = config.total_steps(self.steps_per_epoch)
        self.state = LoopState()
        self.history = History(precision=self.precision.name, qas=config.qas)
        self.step_compute_s = self.step_exchange_s = 0.0  # of the latest step
        self.note = ""  # appended to a divergence message (e.g. where the last checkpoint is)

    # ------------------------------------------------------------------ hooks
    def before_step(self, batch: Batch) -> None:
        """Runs before the step's first forward."""

    def exchange(self, batch: Batch) -> None:
        """Between backward and the optimizer step: combine the workers' gradients."""

    def after_step(self, batch: Batch) -> None:
        """Runs after the optimizer step (not timed: logging, checkpoints)."""

    def after_epoch(self) -> None:
        """Runs after an epoch's History row is recorded (not timed)."""

    def shard(self, batch: Batch, worker: int) -> torch.Tensor:
        """Worker ``worker``'s sample indices of the global batch."""
        size = self.config.batch_size
        return batch.indices[worker * size:(worker + 1) * size]

    def compute_shard(self, batch: Batch, worker: int) -> tuple[float, int, int]:
        """Zero the gradients, forward, loss (NaN/inf: TrainingDiverged), backward on one
        shard; returns (loss, correct, count)."""
        idx = self.shard(batch, worker)
        xb = self.task.x_train[idx].to(self.device)  # (b, *input_shape)
        yb = self.task.y_train[idx].to(self.device)  # (b,)
        started = time.perf_counter()
        self.opt.zero_grad(set_to_none=True)
        with self.precision.autocast():  # the precision's forward (plain for fp32)
            logits = self.forward(xb)  # (b, num_classes)
            loss = self.loss_fn(logits, yb)
        _check_scalar(loss)
        value = float(loss.detach())
        if not math.isfinite(value):  # stop before any gradient of it is exchanged or applied
            raise TrainingDiverged(self._diverged(batch, worker, value),
                                   step=batch.global_step + 1, loss=value)
        self.precision.backward(loss)
        self.step_compute_s += time.perf_counter() - started
        return value, int((logits.argmax(dim=1) == yb).sum()), len(idx)

    # ------------------------------------------------------------------ the loop
    def run(self) -> History:
        """Train until ``total_steps``; returns the History (also kept as ``self.history``)."""
        bar = tqdm(total=self.total_steps, initial=self.state.global_step, unit="step",
                   disable=not self.progress, desc=self.label)
        try:
            while self.state.global_step < self.total_steps:
                self._epoch(bar)
        finally:
            bar.close()
        return self.history

    def _epoch(self, bar: Any) -> None:
        s = self.state
        if s.perm is None:
            s.perm = draw_order(self.gen, self.num_samples)
        size = self.workers * self.config.batch_size
        while s.step < self.steps_per_epoch and s.global_step < self.total_steps:
            batch = Batch(s.epoch, s.step, s.global_step, self.steps_per_epoch,
                          batch_at(s.perm, s.step, size, self.indices))
            started = time.perf_counter()
            self.step(batch)
            s.elapsed_s += time.perf_counter() - started
            if self.progress:
                bar.update(1)
                bar.set_postfix(loss=f"{s.loss_sum / s.seen:.4f}",
                                acc=f"{s.correct / s.seen:.3f}", refresh=False)
            self.after_step(batch)
        self._end_epoch()

    def step(self, batch: Batch) -> None:
        """One optimizer step on ``batch``: shards, exchange, update."""
        self.step_compute_s = 0.0
        self.before_step(batch)
        results = [self.compute_shard(batch, w) for w in self.shards]
        started = time.perf_counter()
        self.exchange(batch)
        self.step_exchange_s = time.perf_counter() - started
        self.precision.step(self.opt)
        s = self.state
        s.step += 1
        s.global_step += 1
        for loss, correct, count in results:
            s.loss_sum += loss * count
            s.correct += correct
            s.seen += count

    def _end_epoch(self) -> None:
        s = self.state
        x, y = self.task.x_test, self.task.y_test
        with self.precision.autocast():  # evaluated as it trains
            test_acc = (evaluate(self.model, x, y, batch_size=self.config.eval_batch_size)
                        if self.evaluate else math.nan)
        h = self.history
        samples = (h.samples[-1] if h.epochs else 0) + s.seen
        h._record(loss=s.loss_sum / s.seen, train_acc=s.correct / s.seen, test_acc=test_acc,
                  time_s=s.elapsed_s, steps=s.global_step, samples=samples)
        if self.precision.scaler is not None:
            h._record(loss_scale=self.precision.loss_scale,
                      skipped_steps=self.precision.skipped - sum(h.skipped_steps))
        self.state = LoopState(epoch=s.epoch + 1, global_step=s.global_step)
        self.after_epoch()

    def _diverged(self, batch: Batch, worker: int, loss: float) -> str:
        """What went wrong, where, and the likeliest cause."""
        where = f" on worker {worker}" if self.workers > 1 else ""
        x = self.task.x_train[self.shard(batch, worker)]
        lr = self.config.lr
        if x.is_floating_point() and not bool(torch.isfinite(x).all()):
            cause = (f"the batch holds NaN or infinite inputs (task {self.task.name!r}): "
                     "clean or normalize the data")
        else:
            cause = (f"the learning rate lr={lr:g} is too large for this model and data "
                     f"(try lr={lr / 10:g})")
            if self.loss_fn is not F.cross_entropy:
                cause += ", or the loss_fn returns inf/NaN for this batch"
        return (f"{self.label} diverged: the loss became {loss} at step "
                f"{batch.global_step + 1} (epoch {batch.epoch + 1}, step {batch.step + 1} of "
                f"{batch.steps_per_epoch}){where}. Likely cause: {cause}. Training stopped "
                f"before this step's update, so the weights are those of step "
                f"{batch.global_step}.{self.note}")


def _masks(model: nn.Module, plan: TrainPlan | None
           ) -> dict[nn.Parameter, tuple[torch.Tensor, ...]]:
    """{parameter of ``model``: one broadcastable bool vector per selected dim, True where
    it trains} for the plan's channel-sparse parameters."""
    if plan is None or not plan.channels:
        return {}
    plan.check_model(model)
    out = {}
    for name, p in model.named_parameters():
        entries = entries_of(plan.channels, name)
        if entries:
            out[p] = tuple(~off for off in frozen_slices(tuple(p.shape), entries, p.device))
    return out


def _check_scalar(loss: object) -> None:
    if not isinstance(loss, torch.Tensor) or loss.ndim != 0:
        got = (f"a tensor of shape {tuple(loss.shape)}" if isinstance(loss, torch.Tensor)
               else f"a {type(loss).__name__}")
        raise ValueError(f"loss_fn must return a scalar tensor (one number for the batch), "
                         f"got {got}; reduce it, e.g. with .mean() or reduction='mean'")
