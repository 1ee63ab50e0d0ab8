"""History: the per-epoch numbers of a run; evaluate: accuracy on held-out data."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .._checks import check_positive_int, choice_error
from ..models import eval_mode

__all__ = ["History", "evaluate", "model_device", "METRICS"]

METRICS = ("loss", "train_acc", "test_acc")
_PER_EPOCH = ("loss", "train_acc", "test_acc", "time_s", "steps", "samples")
_SCALER = ("loss_scale", "skipped_steps")  # recorded per epoch where a loss scaler runs


@dataclass(frozen=True)
class History:
    """Per-epoch numbers of one run; ``steps`` and ``samples`` are cumulative counts.

    ``loss`` and ``train_acc`` average over the training batches as they were seen
    (train mode, weights still moving); ``test_acc`` is measured after the epoch.
    ``time_s`` is the wall time of the epoch's training steps (no evaluation, no saving).
    ``precision`` and ``qas`` say how the run trained (``odtkit.quant.precision``); with
    a loss scaler (fp16) ``loss_scale`` is its scale at each epoch's end and
    ``skipped_steps`` the optimizer steps it skipped in that epoch (inf/NaN gradients);
    both are empty for the other precisions. ``engine``: "pytorch" (stock autograd) or
    "lean" (``odt.lean``'s layers).
    """

    loss: list[float] = field(default_factory=list)
    train_acc: list[float] = field(default_factory=list)
    test_acc: list[float] = field(default_factory=list)
    time_s: list[float] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)
    samples: list[int] = field(default_factory=list)
    precision: str = "fp32"
    qas: bool = False
    loss_scale: list[float] = field(default_factory=list)
    skipped_steps: list[int] = field(default_factory=list)
    engine: str = "pytorch"

    def __post_init__(self) -> None:
        lengths = {name: len(getattr(self, name)) for name in _PER_EPOCH}
        lengths.update({name: len(getattr(self, name)) for name in _SCALER
                        if getattr(self, name)})
        if len(set(lengths.values())) > 1:
            raise ValueError(f"History lists must have one entry per epoch, got lengths {lengths}")

    @property
    def epochs(self) -> int:
        """Number of epochs recorded."""
        return len(self.loss)

    def __len__(self) -> int:
        return self.epochs

    def as_dict(self) -> dict[str, Any]:
        """Plain copies of the per-epoch lists, the precision and qas (for JSON, pandas
        or a checkpoint); ``loss_scale`` and ``skipped_steps`` only where recorded, the
        engine where it is not "pytorch"."""
        out: dict[str, Any] = {name: list(getattr(self, name)) for name in _PER_EPOCH}
        out.update({name: list(getattr(self, name)) for name in _SCALER if getattr(self, name)})
        if self.precision != "fp32" or self.qas:
            out.update(precision=self.precision, qas=self.qas)
        if self.engine != "pytorch":
            out["engine"] = self.engine
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> History:
        """Rebuild a History from :meth:`as_dict` output."""
        return cls(**{key: value if isinstance(value, (str, bool)) else list(value)
                      for key, value in data.items()})

    def _row(self, i: int) -> dict[str, float | int]:
        row: dict[str, float | int] = {"epoch": i + 1}
        row.update({key: values[i] for key, values in self.as_dict().items()
                    if isinstance(values, list)})
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
            f"{sum(self.time_s):.1f} s{self._precision_note()}"
            f"{', lean engine' if self.engine == 'lean' else ''})"
        )

    def _precision_note(self) -> str:
        if self.precision == "fp32" and not self.qas:
            return ""
        note = f", {self.precision}" + (" + QAS" if self.qas else "")
        if self.loss_scale:
            note += f", loss scale {self.loss_scale[-1]:g}, {sum(self.skipped_steps)} skipped"
        return note


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256) -> float:
    """Accuracy of ``model`` on (x, y) in eval mode without gradients; modes are restored."""
    if len(x) != len(y):
        raise ValueError(f"x and y differ in length: {len(x)} inputs but {len(y)} labels")
    if len(x) == 0:
        raise ValueError("cannot evaluate on 0 samples: pass a non-empty x and y")
    check_positive_int("batch_size", batch_size)
    device = model_device(model)
    correct = 0
    with eval_mode(model):
        for start in range(0, len(x), batch_size):
            xb = x[start : start + batch_size].to(device)  # (B, *input_shape)
            yb = y[start : start + batch_size].to(device)  # (B,)
            correct += int((model(xb).argmax(dim=1) == yb).sum())
    return correct / len(x)


def model_device(model: nn.Module) -> torch.device:
    """Where the model's first parameter lives (the CPU for a model without parameters)."""
    first = next(model.parameters(), None)
    return first.device if first is not None else torch.device("cpu")
