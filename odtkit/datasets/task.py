"""The Task value object: a classification task's tensors, shapes, classes and source."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from .._checks import check_int, check_seed

__all__ = ["Task"]


@dataclass(frozen=True, eq=False, repr=False)
class Task:
    """A classification task: train/test tensors, input shape, class names, optional source.

    ``source`` is the pretraining domain of a transfer task (the task itself is the target).
    """

    name: str
    description: str
    x_train: torch.Tensor  # float32 (N, *input_shape)
    y_train: torch.Tensor  # int64 (N,)
    x_test: torch.Tensor   # float32 (M, *input_shape)
    y_test: torch.Tensor   # int64 (M,)
    input_shape: tuple[int, ...]
    classes: tuple[str, ...]
    source: Task | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_shape", tuple(int(d) for d in self.input_shape))
        object.__setattr__(self, "classes", tuple(str(c) for c in self.classes))
        if len(self.classes) < 2:
            raise ValueError(f"task {self.name!r} needs >= 2 classes, got {self.classes}")
        for split in ("train", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if not isinstance(x, torch.Tensor) or x.dtype != torch.float32:
                raise TypeError(f"x_{split} must be a float32 tensor, got "
                                f"{getattr(x, 'dtype', type(x).__name__)}")
            if tuple(x.shape[1:]) != self.input_shape:
                raise ValueError(f"x_{split} has shape {tuple(x.shape)}, expected "
                                 f"(N, *{self.input_shape})")
            if not isinstance(y, torch.Tensor) or y.dtype != torch.int64 or y.ndim != 1:
                raise TypeError(f"y_{split} must be a 1-D int64 tensor, got "
                                f"{getattr(y, 'dtype', type(y).__name__)} "
                                f"{tuple(getattr(y, 'shape', ()))}")
            if len(x) != len(y):
                raise ValueError(f"x_{split} has {len(x)} samples but y_{split} has {len(y)}")
            if len(y) and (int(y.min()) < 0 or int(y.max()) >= len(self.classes)):
                raise ValueError(f"y_{split} holds labels outside 0..{len(self.classes) - 1}")
        if self.source is not None:
            if not isinstance(self.source, Task):
                raise TypeError(f"source must be a Task or None, got {type(self.source).__name__}")
            if self.source.input_shape != self.input_shape:
                raise ValueError(f"source input_shape {self.source.input_shape} differs from "
                                 f"the task's {self.input_shape}")

    @property
    def num_classes(self) -> int:
        """Number of classes (length of ``classes``)."""
        return len(self.classes)

    def __repr__(self) -> str:
        source = f", source={self.source.name!r}" if self.source is not None else ""
        return (f"Task({self.name!r}, train={len(self.y_train)}, test={len(self.y_test)}, "
                f"input_shape={self.input_shape}, num_classes={self.num_classes}{source})")

    def subset(self, n_train: int | None = None, n_test: int | None = None,
               seed: int = 0) -> Task:
        """A random subset (None keeps a split whole); ``source`` is kept unchanged."""
        gen = torch.Generator().manual_seed(check_seed("seed", seed))
        changes: dict[str, torch.Tensor] = {}
        for split, n in (("train", n_train), ("test", n_test)):
            if n is None:
                continue
            total = len(getattr(self, f"y_{split}"))
            check_int(f"n_{split}", n, low=1, high=total)
            idx = torch.randperm(total, generator=gen)[:n].sort().values
            changes[f"x_{split}"] = getattr(self, f"x_{split}")[idx]
            changes[f"y_{split}"] = getattr(self, f"y_{split}")[idx]
        return replace(self, **changes)
