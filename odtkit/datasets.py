"""Offline tasks: small datasets that load without a network, as ``Task`` objects.

    task = load("digits-shift")        # target domain; task.source = pretraining domain
    task.x_train.shape                 # (N, 1, 8, 8) float32
    small = task.subset(n_train=200)   # fewer samples for smoke runs or few-shot fine-tuning

Built in: "digits" (scikit-learn's bundled digits), "digits-shift" (a sensor-shift transfer
task built from them) and "mnist1d" (generated). "mnist", "cifar10" and "speech-commands"
read the original files from a local folder (see ``odtkit._loaders``).
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import torch

from . import _loaders
from ._shift import DIGITS_SHIFT_DESCRIPTION, sensor_shift
from ._util import choice_error, normalize_name

__all__ = ["Task", "names", "load"]


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
        gen = torch.Generator().manual_seed(seed)
        changes: dict[str, torch.Tensor] = {}
        for split, n in (("train", n_train), ("test", n_test)):
            if n is None:
                continue
            total = len(getattr(self, f"y_{split}"))
            if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= total:
                raise ValueError(f"n_{split} must be an int in 1..{total}, got {n!r}")
            idx = torch.randperm(total, generator=gen)[:n].sort().values
            changes[f"x_{split}"] = getattr(self, f"x_{split}")[idx]
            changes[f"y_{split}"] = getattr(self, f"y_{split}")[idx]
        return replace(self, **changes)


# ------------------------------------------------------------------------- built-in tasks

_DIGIT_CLASSES = tuple(str(d) for d in range(10))


def _stratified_split(y: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray,
                                                                               np.ndarray]:
    """Indices (first, second) with ``test_fraction`` of every class in the second part."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    rng = np.random.default_rng(seed)
    first, second = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        k = int(round(len(idx) * test_fraction))
        second.append(idx[:k])
        first.append(idx[k:])
    return np.sort(np.concatenate(first)), np.sort(np.concatenate(second))


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.images / 16.0).astype(np.float32)[:, None]  # (1797, 1, 8, 8) in [0, 1]
    return x, bunch.target.astype(np.int64)


def _make_task(name: str, description: str, x: np.ndarray, y: np.ndarray, train: np.ndarray,
               test: np.ndarray, classes: tuple[str, ...], source: Task | None = None) -> Task:
    return Task(name=name, description=description,
                x_train=torch.tensor(x[train]), y_train=torch.tensor(y[train]),
                x_test=torch.tensor(x[test]), y_test=torch.tensor(y[test]),
                input_shape=x.shape[1:], classes=classes, source=source)


def _digits(seed: int = 0, test_fraction: float = 0.3) -> Task:
    """scikit-learn's 1797 handwritten digits, 1x8x8 in [0, 1], stratified split by ``seed``."""
    x, y = _digits_arrays()
    train, test = _stratified_split(y, test_fraction, seed)
    return _make_task("digits", "scikit-learn handwritten digits (UCI optdigits test set), "
                      "1x8x8 grey levels in [0, 1], 10 classes", x, y, train, test,
                      _DIGIT_CLASSES)


def _digits_shift(seed: int = 0, test_fraction: float = 0.3, severity: float = 1.0,
                  source_fraction: float = 0.5) -> Task:
    """Transfer task: disjoint source and target digits; the target seen by a new sensor."""
    x, y = _digits_arrays()
    target_idx, source_idx = _stratified_split(y, source_fraction, seed)
    xs, ys = x[source_idx], y[source_idx]
    s_train, s_test = _stratified_split(ys, test_fraction, seed + 1)
    source = _make_task("digits-shift/source", "source domain of digits-shift: the original "
                        "digits (pretraining data)", xs, ys, s_train, s_test, _DIGIT_CLASSES)
    xt = sensor_shift(torch.tensor(x[target_idx]), severity=severity).numpy()
    yt = y[target_idx]
    t_train, t_test = _stratified_split(yt, test_fraction, seed + 2)
    return _make_task("digits-shift", DIGITS_SHIFT_DESCRIPTION.format(severity=severity),
                      xt, yt, t_train, t_test, _DIGIT_CLASSES, source=source)


@functools.lru_cache(maxsize=4)
def _mnist1d_arrays(num_samples: int, seed: int) -> dict[str, np.ndarray]:
    """Generate MNIST-1D (about 1 s for 5000 samples); the global RNGs are left untouched."""
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples, args.seed = num_samples, seed
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        data = make_dataset(args)  # seeds numpy's and Python's global RNGs itself
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    return {k: np.asarray(data[k]) for k in ("x", "y", "x_test", "y_test")}


def _mnist1d(num_samples: int = 5000, seed: int = 42) -> Task:
    """MNIST-1D generated offline with its reference generator: (1, 40) sequences, 10 classes."""
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 20:
        raise ValueError(f"num_samples must be an int >= 20, got {num_samples!r}")
    d = _mnist1d_arrays(num_samples, seed)

    def x(a: np.ndarray) -> torch.Tensor:
        return torch.tensor(a, dtype=torch.float32)[:, None]  # (N, 1, 40)

    def y(a: np.ndarray) -> torch.Tensor:
        return torch.tensor(a, dtype=torch.int64)

    return Task(name="mnist1d", description="MNIST-1D: ten 1-D digit templates padded, "
                "sheared, scaled, translated and noised into length-40 sequences "
                f"(generated offline, seed {seed})", x_train=x(d["x"]), y_train=y(d["y"]),
                x_test=x(d["x_test"]), y_test=y(d["y_test"]), input_shape=(1, 40),
                classes=_DIGIT_CLASSES)


_TASKS: dict[str, Callable[..., Task]] = {
    "digits": _digits,
    "digits-shift": _digits_shift,
    "mnist1d": _mnist1d,
    "mnist": _loaders.load_mnist,
    "cifar10": _loaders.load_cifar10,
    "speech-commands": _loaders.load_speech_commands,
}


def names() -> list[str]:
    """Names of the tasks ``load`` knows."""
    return list(_TASKS)


def load(name: str, **kw) -> Task:
    """Load task ``name``; keywords go to its loader (e.g. ``seed=``, ``root=``)."""
    keyed = {normalize_name(n): n for n in _TASKS}
    if not isinstance(name, str) or normalize_name(name) not in keyed:
        raise choice_error("task", name, _TASKS)
    return _TASKS[keyed[normalize_name(name)]](**kw)
