"""The training loop: deterministic, resumable from atomic checkpoints, with a History.

Same seed and config -> the same History numbers and bit-identical weights, also when a
run is killed and resumed from its checkpoint (mid-epoch too, with ``checkpoint_every``).
Only torch RNGs drive the loop: one data permutation per epoch from a Generator seeded
by ``seed``, and the global torch RNG (seeded by ``seed`` too) for dropout.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from .._checks import check_positive_int, choice_error
from .._io import save_atomic
from ..models import eval_mode
from .checkpoint import (
    FORMAT,
    check_fingerprint,
    load_checkpoint,
    rng_state,
    set_rng_state,
)
from .optim import check_optimizer, make_optimizer

__all__ = ["History", "train", "evaluate", "check_task", "load_checkpoint"]

METRICS = ("loss", "train_acc", "test_acc")
_TASK_FIELDS = ("name", "x_train", "y_train", "x_test", "y_test", "input_shape", "num_classes")


@dataclass(frozen=True)
class History:
    """Per-epoch numbers of one run; ``steps`` and ``samples`` are cumulative counts.

    ``loss`` and ``train_acc`` average over the training batches as they were seen
    (train mode, weights still moving); ``test_acc`` is measured after the epoch.
    ``time_s`` is the wall time of the epoch's training steps (no evaluation, no saving).
    """

    loss: list[float] = field(default_factory=list)
    train_acc: list[float] = field(default_factory=list)
    test_acc: list[float] = field(default_factory=list)
    time_s: list[float] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)
    samples: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        lengths = {name: len(values) for name, values in self.as_dict().items()}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"History lists must have one entry per epoch, got lengths {lengths}")

    @property
    def epochs(self) -> int:
        """Number of epochs recorded."""
        return len(self.loss)

    def __len__(self) -> int:
        return self.epochs

    def as_dict(self) -> dict[str, list[float] | list[int]]:
        """Plain copies of the per-epoch lists (for JSON, pandas or a checkpoint)."""
        return {
            "loss": list(self.loss),
            "train_acc": list(self.train_acc),
            "test_acc": list(self.test_acc),
            "time_s": list(self.time_s),
            "steps": list(self.steps),
            "samples": list(self.samples),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Sequence[float]]) -> History:
        """Rebuild a History from :meth:`as_dict` output."""
        return cls(**{key: list(values) for key, values in data.items()})

    def _row(self, i: int) -> dict[str, float | int]:
        row: dict[str, float | int] = {"epoch": i + 1}
        row.update({key: values[i] for key, values in self.as_dict().items()})
        return row

    def final(self) -> dict[str, float | int]:
        """The last epoch's numbers, with its 1-based ``epoch``."""
        if not self.epochs:
            raise ValueError("History is empty: no epoch has finished yet")
        return self._row(self.epochs - 1)

    def best(self, metric: str = "test_acc") -> dict[str, float | int]:
        """The epoch with the highest accuracy (or lowest loss) for ``metric``; first on ties."""
        if metric not in METRICS:
            raise choice_error("History metric", metric, METRICS)
        if not self.epochs:
            raise ValueError("History is empty: no epoch has finished yet")
        values = getattr(self, metric)
        pick = min if metric == "loss" else max
        return self._row(values.index(pick(values)))

    def _record(self, **row: float | int) -> None:
        for key, value in row.items():
            getattr(self, key).append(value)

    def __repr__(self) -> str:
        if not self.epochs:
            return "History(0 epochs)"
        last, best = self.final(), self.best()
        return (
            f"History({self.epochs} epoch{'s' * (self.epochs != 1)}, final loss={last['loss']:.4f} "
            f"train_acc={last['train_acc']:.3f} test_acc={last['test_acc']:.3f}, "
            f"best test_acc={best['test_acc']:.3f} @ epoch {best['epoch']}, "
            f"{sum(self.time_s):.1f} s)"
        )


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256) -> float:
    """Accuracy of ``model`` on (x, y) in eval mode without gradients; modes are restored."""
    if len(x) != len(y):
        raise ValueError(f"x and y differ in length: {len(x)} inputs but {len(y)} labels")
    if len(x) == 0:
        raise ValueError("cannot evaluate on 0 samples: pass a non-empty x and y")
    check_positive_int("batch_size", batch_size)
    device = _model_device(model)
    correct = 0
    with eval_mode(model):
        for start in range(0, len(x), batch_size):
            xb = x[start : start + batch_size].to(device)  # (B, *input_shape)
            yb = y[start : start + batch_size].to(device)  # (B,)
            correct += int((model(xb).argmax(dim=1) == yb).sum())
    return correct / len(x)


@dataclass
class _Loop:
    """Where the loop stands; saved in every checkpoint so a resume continues exactly."""

    epoch: int = 0  # 0-based epoch being run
    step: int = 0  # optimizer steps done within this epoch
    global_step: int = 0
    perm: torch.Tensor | None = None  # this epoch's data order, drawn when it starts
    loss_sum: float = 0.0  # sum over the epoch's samples so far
    correct: int = 0
    seen: int = 0
    elapsed_s: float = 0.0


def train(
    model: nn.Module,
    task: Any,
    plan: Any = None,
    *,
    epochs: int = 1,
    lr: float = 0.05,
    optimizer: str = "sgd-m",
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    batch_size: int = 32,
    drop_last: bool = False,
    seed: int = 0,
    checkpoint: str | os.PathLike[str] | None = None,
    checkpoint_every: int | None = None,
    progress: bool = True,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    callbacks: Sequence[Callable[[History, nn.Module], None]] = (),
    max_steps: int | None = None,
    eval_batch_size: int = 256,
) -> History:
    """Train ``model`` on ``task`` (after ``plan.apply_(model)`` if a plan is given).

    ``checkpoint``: a file written atomically after every epoch (and every
    ``checkpoint_every`` steps); if it exists when ``train`` starts, training resumes
    from it and must use the same config. ``max_steps`` caps the total optimizer steps
    (the cut epoch is recorded as it stands). ``callbacks`` run as ``cb(history, model)``
    after each epoch. The model is put in train mode before the plan is applied (so a
    plan may keep modules in eval mode) and is left that way.
    """
    _check_args(epochs, batch_size, checkpoint_every, max_steps, eval_batch_size, lr)
    if checkpoint_every is not None and checkpoint is None:
        raise ValueError(
            f"checkpoint_every={checkpoint_every} needs a file to write: pass "
            "checkpoint='run.pt' as well, or drop checkpoint_every"
        )
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got seed={seed!r}")
    check_optimizer(optimizer)
    check_task(task)
    model.train()
    if plan is not None:
        if not callable(getattr(plan, "apply_", None)):
            raise TypeError(f"plan must have an apply_(model) method, got {type(plan).__name__}")
        plan.apply_(model)
    device = _model_device(model)
    _probe(model, task, device)
    opt = make_optimizer(optimizer, model.parameters(), lr, momentum, weight_decay)
    loss_fn = loss_fn if loss_fn is not None else F.cross_entropy
    n = len(task.x_train)
    if drop_last and n < batch_size:
        raise ValueError(
            f"drop_last=True with batch_size={batch_size} > {n} training samples leaves no "
            "batch at all: lower batch_size or pass drop_last=False"
        )
    per_epoch = n // batch_size if drop_last else math.ceil(n / batch_size)
    total = epochs * per_epoch if max_steps is None else min(epochs * per_epoch, max_steps)
    config = {
        "optimizer": optimizer, "lr": float(lr), "momentum": float(momentum),
        "weight_decay": float(weight_decay), "batch_size": batch_size, "drop_last": drop_last,
        "seed": seed, "epochs": epochs, "max_steps": max_steps, "task": str(task.name),
        "train_samples": n, "model": _model_layout(model),
        "trainable": sorted(name for name, p in model.named_parameters() if p.requires_grad),
        "plan_precision": None if plan is None else str(getattr(plan, "precision", None)),
        "loss_fn": getattr(loss_fn, "__name__", type(loss_fn).__name__),
    }  # fmt: skip

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)  # data order only
    history, loop = History(), _Loop()
    path = None if checkpoint is None else Path(checkpoint)
    if path is not None and path.exists():
        state = load_checkpoint(path)
        check_fingerprint(state["config"], config, path)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        gen.set_state(state["data_rng"])
        set_rng_state(state["rng"], device)
        history = History.from_dict(state["history"])
        loop = _Loop(**state["loop"])

    def save() -> None:
        if path is None:
            return
        save_atomic(
            {
                "format": FORMAT, "config": config, "model": model.state_dict(),
                "optimizer": opt.state_dict(), "data_rng": gen.get_state(),
                "rng": rng_state(device), "history": history.as_dict(),
                "loop": dict(vars(loop)),
            },
            path,
        )  # fmt: skip

    bar = tqdm(
        total=total, initial=loop.global_step, disable=not progress, unit="step",
        desc=f"train {task.name}",
    )  # fmt: skip
    warned = False  # about a diverged loss, once per call
    try:
        while loop.global_step < total:
            if loop.perm is None:
                loop.perm = torch.randperm(n, generator=gen)
            started = time.perf_counter()
            while loop.step < per_epoch and loop.global_step < total:
                idx = loop.perm[loop.step * batch_size : (loop.step + 1) * batch_size]
                xb = task.x_train[idx].to(device)  # (B, *input_shape)
                yb = task.y_train[idx].to(device)  # (B,)
                opt.zero_grad(set_to_none=True)
                logits = model(xb)  # (B, num_classes)
                loss = loss_fn(logits, yb)
                loss.backward()
                opt.step()
                loop.step += 1
                loop.global_step += 1
                loss_value = float(loss.item())
                if not (math.isfinite(loss_value) or warned):
                    warned = True
                    message = f"loss became {loss_value} at step {loop.global_step} (lr={lr})"
                    warnings.warn(f"{message}: training diverged; try a smaller lr",
                                  RuntimeWarning, stacklevel=2)  # fmt: skip
                loop.loss_sum += loss_value * len(idx)
                loop.correct += int((logits.argmax(dim=1) == yb).sum())
                loop.seen += len(idx)
                if progress:
                    bar.update(1)
                    bar.set_postfix(
                        loss=f"{loop.loss_sum / loop.seen:.4f}",
                        acc=f"{loop.correct / loop.seen:.3f}",
                        refresh=False,
                    )
                mid_epoch = loop.step < per_epoch and loop.global_step < total
                if checkpoint_every and mid_epoch and loop.global_step % checkpoint_every == 0:
                    loop.elapsed_s += time.perf_counter() - started
                    save()
                    started = time.perf_counter()
            loop.elapsed_s += time.perf_counter() - started
            test_acc = evaluate(model, task.x_test, task.y_test, batch_size=eval_batch_size)
            history._record(
                loss=loop.loss_sum / loop.seen, train_acc=loop.correct / loop.seen,
                test_acc=test_acc, time_s=loop.elapsed_s, steps=loop.global_step,
                samples=(history.samples[-1] if history.epochs else 0) + loop.seen,
            )  # fmt: skip
            loop = _Loop(epoch=loop.epoch + 1, global_step=loop.global_step)
            save()
            for callback in callbacks:
                callback(history, model)
    finally:
        bar.close()
    return history


def _check_args(
    epochs: object, batch_size: object, every: object, max_steps: object, eval_bs: object,
    lr: float,
) -> None:  # fmt: skip
    check_positive_int("epochs", epochs)
    check_positive_int("batch_size", batch_size)
    check_positive_int("checkpoint_every", every, allow_none=True)
    check_positive_int("max_steps", max_steps, allow_none=True)
    check_positive_int("eval_batch_size", eval_bs)
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"learning rate must be a positive finite number, got lr={lr!r}")


def check_task(task: Any) -> None:
    """Duck-typed check of an odtkit.datasets.Task: fields present, labels usable."""
    missing = [name for name in _TASK_FIELDS if not hasattr(task, name)]
    if missing:
        raise TypeError(
            f"task must be an odtkit.datasets.Task; {type(task).__name__} lacks "
            f"{', '.join(missing)}. Load one with odt.datasets.load('digits')."
        )
    for split in ("train", "test"):
        x, y = getattr(task, f"x_{split}"), getattr(task, f"y_{split}")
        if len(x) == 0 or len(x) != len(y):
            raise ValueError(
                f"task {task.name!r}: x_{split} has {len(x)} samples and y_{split} {len(y)}; "
                "they must be equal and non-empty"
            )
        if y.dtype != torch.int64 or int(y.min()) < 0 or int(y.max()) >= task.num_classes:
            raise ValueError(
                f"task {task.name!r}: y_{split} must hold int64 class indices in "
                f"[0, {task.num_classes}), got dtype {y.dtype}, range "
                f"[{int(y.min())}, {int(y.max())}]"
            )


def _model_device(model: nn.Module) -> torch.device:
    first = next(model.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


def _model_layout(model: nn.Module) -> str:
    """Class name, size and a digest of state_dict names/shapes: a resume must match it."""
    layout = ";".join(f"{k}:{tuple(v.shape)}" for k, v in model.state_dict().items())
    digest = hashlib.sha1(layout.encode()).hexdigest()[:12]
    numel = sum(p.numel() for p in model.parameters())
    return f"{type(model).__name__}, {numel} parameters, layout {digest}"


@torch.no_grad()
def _probe(model: nn.Module, task: Any, device: torch.device) -> None:
    """Run two training inputs through the model (eval mode: no RNG, no BN update)."""
    xb = task.x_train[:2].to(device)  # (2, *input_shape)
    expects = getattr(model, "input_shape", None)
    hint = (
        f"the model expects input_shape {tuple(expects)}" if expects is not None
        else "the model does not declare an input_shape"
    )  # fmt: skip
    try:
        with eval_mode(model):
            out = model(xb)
    except Exception as err:
        raise ValueError(
            f"the model cannot run on task {task.name!r}: its inputs have shape "
            f"{tuple(task.input_shape)} (batch {tuple(xb.shape)}), but {hint}. Create the "
            "model for this task, e.g. odt.models.create(name, "
            "input_shape=task.input_shape, num_classes=task.num_classes). "
            f"({type(err).__name__}: {err})"
        ) from err
    if out.ndim != 2 or out.shape[1] != task.num_classes:
        raise ValueError(
            f"the model outputs shape {tuple(out.shape)} for a batch of {len(xb)}, but task "
            f"{task.name!r} has {task.num_classes} classes: expected ({len(xb)}, "
            f"{task.num_classes}). Create the model with num_classes=task.num_classes."
        )
