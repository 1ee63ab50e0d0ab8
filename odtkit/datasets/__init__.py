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

import numpy as np
import torch

from .._checks import choice_error, normalize_name
from . import _loaders
from ._files import data_dir
from ._shift import DIGITS_SHIFT_DESCRIPTION, sensor_shift
from .task import Task

__all__ = ["Task", "names", "load", "data_dir"]


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
