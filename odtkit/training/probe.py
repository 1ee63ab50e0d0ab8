"""Checks before training: is this a usable task, and does the model fit it?

Every trainer (train, simulate, federated, DDP) runs both, so a model built for another
task fails with the same clear message everywhere, not deep inside torch.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..models import eval_mode
from .history import model_device

__all__ = ["check_task", "check_model"]

_TASK_FIELDS = ("name", "x_train", "y_train", "x_test", "y_test", "input_shape", "num_classes")


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


@torch.no_grad()
def check_model(model: nn.Module, task: Any) -> None:
    """Raise naming both shapes unless ``model`` maps two of the task's training inputs to
    (2, num_classes) logits (run in eval mode: no RNG drawn, no BatchNorm statistics moved)."""
    device = model_device(model)
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
