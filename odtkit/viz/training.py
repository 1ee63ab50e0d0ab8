"""Figures of training runs: accuracy or loss per epoch, one line per run."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from .._checks import choice_error

__all__ = ["accuracy_curves", "domain_samples", "loss_curve"]

_METRICS = ("test_acc", "train_acc", "loss")
_LABELS = {"test_acc": "test accuracy", "train_acc": "train accuracy", "loss": "training loss"}


def _series(history: Any, metric: str, run: str) -> list[float]:
    values = getattr(history, metric, None)
    if values is None:
        raise TypeError(
            f"run {run!r} is a {type(history).__name__}, not an odtkit History "
            f"(no {metric!r} list); pass the value returned by odt.train"
        )
    if len(values) == 0:
        raise ValueError(f"run {run!r} has no finished epoch to plot")
    return [float(v) for v in values]


_MARKERS = "osD^v<>pX*"  # one marker (and colour C0..C9) per run: ten runs at most


def accuracy_curves(
    histories: Mapping[str, Any],
    metric: str = "test_acc",
    *,
    title: str | None = None,
    figsize: tuple[float, float] = (5.5, 3.5),
) -> Figure:
    """One line per run of ``metric`` ("test_acc", "train_acc" or "loss") against epoch."""
    if metric not in _METRICS:
        raise choice_error("metric", metric, _METRICS)
    if not histories:
        raise ValueError("histories is empty: pass {'run name': history, ...}")
    if len(histories) > len(_MARKERS):
        raise ValueError(f"{len(histories)} runs in one plot cannot each get their own colour "
                         f"and marker; plot at most {len(_MARKERS)} at a time")
    fig, ax = plt.subplots(figsize=figsize)
    for i, (run, history) in enumerate(histories.items()):
        values = _series(history, metric, run)
        epochs = range(1, len(values) + 1)
        ax.plot(epochs, values, marker=_MARKERS[i], markersize=4, color=f"C{i}", label=str(run))
    ax.set_xlabel("epoch")
    ax.set_ylabel(_LABELS[metric])
    if metric != "loss":
        ax.set_ylim(0.0, 1.0)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    ax.set_title(title if title is not None else f"{_LABELS[metric]} per epoch")
    fig.tight_layout()
    return fig


def loss_curve(
    history: Any, *, title: str | None = None, figsize: tuple[float, float] = (5.5, 3.5)
) -> Figure:
    """Training loss per epoch of one run, test accuracy on a second axis."""
    loss = _series(history, "loss", "history")
    test_acc = _series(history, "test_acc", "history")
    epochs = range(1, len(loss) + 1)
    fig, ax = plt.subplots(figsize=figsize)
    ax.plot(epochs, loss, marker="o", markersize=3, color="C0", label="training loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss", color="C0")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    acc_ax = ax.twinx()
    acc_ax.plot(epochs, test_acc, marker="s", markersize=3, color="C1", label="test accuracy")
    acc_ax.set_ylabel("test accuracy", color="C1")
    acc_ax.set_ylim(0.0, 1.0)
    ax.set_title(title if title is not None else "loss and test accuracy per epoch")
    fig.tight_layout()
    return fig


def domain_samples(task: Any, n: int = 8) -> Figure:
    """The same classes seen in a transfer task's source domain (top) and target (bottom).

    Shows the first ``n`` classes' first test image in each domain; 2-D inputs only.
    """
    source = getattr(task, "source", None)
    if source is None:
        raise ValueError(f"task {getattr(task, 'name', task)!r} has no source domain; "
                         "use a transfer task such as odt.datasets.load('digits-shift')")
    if len(task.input_shape) != 3:
        raise ValueError(f"domain_samples shows images; {task.name!r} has input shape "
                         f"{task.input_shape}")
    n = min(n, task.num_classes)
    fig, axes = plt.subplots(2, n, figsize=(1.1 * n, 2.6), squeeze=False)
    for row, (domain, label) in enumerate(((source, "source"), (task, "target"))):
        for col in range(n):
            index = int((domain.y_test == col).nonzero()[0, 0])
            image = domain.x_test[index]  # (C, H, W)
            ax = axes[row][col]
            ax.imshow(image.permute(1, 2, 0).squeeze(-1).numpy(), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if col == 0:
                ax.set_ylabel(label)
            if row == 0:
                ax.set_title(task.classes[col], fontsize=9)
    fig.suptitle("the same digits, seen by the lab's camera and the device's")
    fig.tight_layout()
    return fig
