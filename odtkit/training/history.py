"""History: the per-epoch numbers of a run; evaluate: accuracy on held-out data."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from .._checks import check_positive_int, choice_error
from ..models import eval_mode

__all__ = ["History", "evaluate", "model_device", "METRICS"]

METRICS = ("loss", "train_acc", "test_acc")


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
