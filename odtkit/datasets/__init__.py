"""Offline tasks: small datasets that load without a network, as ``Task`` objects.

    task = load("digits-shift")        # target domain; task.source = pretraining domain
    task.x_train.shape                 # (N, 1, 8, 8) float32
    small = task.subset(n_train=200)   # fewer samples for smoke runs or few-shot fine-tuning

Built in: "digits" (the 1797 UCI handwritten digits, shipped as package data), "digits-shift" (a sensor-shift transfer
task built from them) and "mnist1d" (generated). "mnist", "cifar10" and "speech-commands"
read the original files from a local folder (``root=``, default ``data_dir()/<name>``).
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from .._checks import check_int, check_real, check_seed, choice_error, lookup
from . import _loaders
from ._files import data_dir
from ._shift import DIGITS_SHIFT_DESCRIPTION, sensor_shift
from .task import Task

__all__ = ["Task", "names", "load", "data_dir"]


# ------------------------------------------------------------------------- built-in tasks

_DIGIT_CLASSES = tuple(str(d) for d in range(10))


def _stratified_split(y: np.ndarray, fraction: float, seed: int, name: str = "test_fraction",
                      parts: tuple[str, str] = ("train", "test")) -> tuple[np.ndarray,
                                                                           np.ndarray]:
    """Indices (first, second) with ``fraction`` of every class in the second part.

    Each part must keep at least one sample of every class: a class with n samples puts
    round(n * fraction) in the second part, so ``fraction`` must lie strictly between
    0.5 / n and 1 - 0.5 / n for the smallest class.
    """
    check_real(name, fraction, low=0, high=1, low_open=True, high_open=True)
    rng = np.random.default_rng(seed)
    first, second = [], []
    classes, counts = np.unique(y, return_counts=True)
    for c, n in zip(classes, counts, strict=True):
        idx = rng.permutation(np.flatnonzero(y == c))
        k = int(round(n * fraction))
        if k == 0 or k == n:
            low, high = 0.5 / counts.min(), 1 - 0.5 / counts.min()
            raise ValueError(
                f"{name}={fraction!r} leaves no {parts[1] if k == 0 else parts[0]} samples of "
                f"class {c} ({n} samples: {k} {parts[1]}, {n - k} {parts[0]}); every class "
                f"needs samples on both sides, so choose {name} between {low:.3g} and "
                f"{high:.3g} (exclusive), e.g. {name}=0.3")
        second.append(idx[:k])
        first.append(idx[k:])
    return np.sort(np.concatenate(first)), np.sort(np.concatenate(second))


# the shipped digits (package data, written by data/build_digits.py), checked on load
DIGITS_FILE = Path(__file__).with_name("data") / "digits.npz"
DIGITS_SHA256 = "87ff0c9e40dc7e2c0e34e7257799c2e3f3aec1a016363bb11cad869ec428a826"


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(DIGITS_FILE) as f:
            images, labels = f["images"], f["labels"]
    except (OSError, KeyError, ValueError) as err:
        raise RuntimeError(f"the digits shipped with odtkit cannot be read ({DIGITS_FILE}: "
                           f"{err}); reinstall odtkit, or rebuild the file from a source "
                           "checkout with python data/build_digits.py") from None
    digest = hashlib.sha256(images.tobytes() + labels.tobytes()).hexdigest()
    if digest != DIGITS_SHA256 or images.shape != (1797, 8, 8) or images.dtype != np.uint8:
        raise RuntimeError(f"the digits shipped with odtkit are damaged ({DIGITS_FILE}: "
                           f"sha256 {digest[:16]}..., expected {DIGITS_SHA256[:16]}...); "
                           "reinstall odtkit, or rebuild the file from a source checkout "
                           "with python data/build_digits.py")
    x = (images / np.float32(16.0)).astype(np.float32)[:, None]  # (1797, 1, 8, 8) in [0, 1]
    return x, labels.astype(np.int64)


def _make_task(name: str, description: str, x: np.ndarray, y: np.ndarray, train: np.ndarray,
               test: np.ndarray, classes: tuple[str, ...], source: Task | None = None) -> Task:
    return Task(name=name, description=description,
                x_train=torch.tensor(x[train]), y_train=torch.tensor(y[train]),
                x_test=torch.tensor(x[test]), y_test=torch.tensor(y[test]),
                input_shape=x.shape[1:], classes=classes, source=source)


def _digits(seed: int = 0, test_fraction: float = 0.3) -> Task:
    """The 1797 handwritten digits of the UCI optdigits test set (as scikit-learn bundles
    them; Alpaydin and Kaynak, CC BY 4.0), 1x8x8 in [0, 1], stratified split by ``seed``."""
    x, y = _digits_arrays()
    train, test = _stratified_split(y, test_fraction, check_seed("seed", seed))
    return _make_task("digits", "scikit-learn handwritten digits (UCI optdigits test set), "
                      "1x8x8 grey levels in [0, 1], 10 classes", x, y, train, test,
                      _DIGIT_CLASSES)


def _digits_shift(seed: int = 0, test_fraction: float = 0.3, severity: float = 1.0,
                  source_fraction: float = 0.5) -> Task:
    """Transfer task: disjoint source and target digits; the target seen by a new sensor."""
    check_seed("seed", seed)
    check_real("test_fraction", test_fraction, low=0, high=1, low_open=True, high_open=True)
    x, y = _digits_arrays()
    target_idx, source_idx = _stratified_split(y, source_fraction, seed, "source_fraction",
                                               ("target", "source"))
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
    check_int("num_samples", num_samples, low=20)
    check_seed("seed", seed)
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
    """Load task ``name`` (case and separators ignored); keywords go to its loader (e.g.
    ``seed=``, ``root=``), and one it does not take is named with the ones it does."""
    key = lookup("task", name, _TASKS)
    loader = _TASKS[key]
    takes = list(inspect.signature(loader).parameters)
    for keyword in kw:
        if keyword not in takes:
            raise TypeError(str(choice_error(f"keyword of load({key!r})", keyword, takes)))
    return loader(**kw)
