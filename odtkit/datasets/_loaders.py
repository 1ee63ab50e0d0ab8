"""Loaders for datasets kept as local files: MNIST (idx), CIFAR-10 (python batches) and
Speech Commands (wav folders, in ``odtkit._speech``).

    task = odtkit.datasets.load("mnist", root="~/data/mnist", limit_train=1000)

``root`` defaults to ``<data dir>/<dataset>`` (``data_dir()``: $ODTKIT_DATA_DIR, else the
``data/`` folder of a source checkout, else ``~/.odtkit/data`` for an installed wheel).
Nothing is downloaded; a missing file raises FileNotFoundError saying what to put where,
a corrupt one ValueError naming the file.
"""

from __future__ import annotations

import gzip
import importlib
import math
import os
import pickle
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from ._files import check_limit, limited_note, missing_error, resolve_root
from ._speech import load_speech_commands
from .task import Task

__all__ = ["load_mnist", "load_cifar10", "load_speech_commands"]

# ------------------------------------------------------------------------------- MNIST

_MNIST_FILES = {  # split -> (images, labels) base names; each may also end in .gz
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IDX_UBYTE = 0x08  # idx type code of unsigned bytes, the only one MNIST uses


def _read_maybe_gzip(path: Path) -> bytes:
    """The file's bytes, gunzipped when the name ends in .gz."""
    if path.suffix != ".gz":
        return path.read_bytes()
    try:
        with gzip.open(path, "rb") as f:
            return f.read()
    except (OSError, EOFError, zlib.error) as err:
        raise ValueError(f"{path}: not a valid gzip file ({err}); the download may be "
                         "truncated, fetch it again") from err


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """Parse an idx file of unsigned bytes with ``ndim`` dimensions (3: images, 1: labels).

    Header: two zero bytes, the type code (0x08 = ubyte), the number of dimensions, then
    one big-endian uint32 size per dimension; the data follow row-major.
    """
    raw = _read_maybe_gzip(path)
    kind = "image" if ndim == 3 else "label"
    expected_magic = (_IDX_UBYTE << 8) | ndim  # 0x00000803 images, 0x00000801 labels
    if len(raw) < 4:
        raise ValueError(f"{path}: only {len(raw)} bytes, too short for an idx header "
                         f"(the file is truncated or empty)")
    (magic,) = struct.unpack(">I", raw[:4])
    if magic != expected_magic:
        hint = ""
        if magic >> 8 == _IDX_UBYTE and magic & 0xFF in (1, 3):
            hint = " (is it the other file of the pair? images and labels may be swapped)"
        raise ValueError(f"{path}: magic number 0x{magic:08X} is not that of an idx {kind} "
                         f"file (expected 0x{expected_magic:08X}: ubyte data, {ndim} "
                         f"dimension{'s' if ndim > 1 else ''}){hint}")
    header_bytes = 4 + 4 * ndim
    if len(raw) < header_bytes:
        raise ValueError(f"{path}: truncated header ({len(raw)} bytes, the {ndim} sizes "
                         f"need {header_bytes})")
    sizes = struct.unpack(f">{ndim}I", raw[4:header_bytes])
    data_bytes = math.prod(sizes)
    found = len(raw) - header_bytes
    if found != data_bytes:
        what = "truncated" if found < data_bytes else "has trailing bytes"
        raise ValueError(f"{path}: file {what}: the header promises sizes {sizes} = "
                         f"{data_bytes} data bytes, the file holds {found}")
    if 0 in sizes:
        raise ValueError(f"{path}: header sizes {sizes} hold no samples")
    return np.frombuffer(raw, dtype=np.uint8, offset=header_bytes).reshape(sizes)


def _mnist_paths(root: Path) -> dict[str, tuple[Path, Path]]:
    """Existing files per split (plain name preferred over .gz); FileNotFoundError if any
    is missing."""
    found: dict[str, list[Path]] = {}
    missing = []
    for split, bases in _MNIST_FILES.items():
        for base in bases:
            plain, zipped = root / base, root / f"{base}.gz"
            path = plain if plain.is_file() else zipped if zipped.is_file() else None
            if path is None:
                missing.append(f"{base}[.gz]")
            else:
                found.setdefault(split, []).append(path)
    if missing:
        expected = [f"{b}[.gz]" for bases in _MNIST_FILES.values() for b in bases]
        raise missing_error("mnist", root, expected, missing)
    return {split: (paths[0], paths[1]) for split, paths in found.items()}


def _mnist_split(images_path: Path, labels_path: Path,
                 limit: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = read_idx(images_path, 3), read_idx(labels_path, 1)
    if len(images) != len(labels):
        raise ValueError(f"{images_path} holds {len(images)} images but {labels_path} holds "
                         f"{len(labels)} labels; the pair must match")
    if int(labels.max()) > 9:
        raise ValueError(f"{labels_path}: label {int(labels.max())} outside 0..9")
    n = len(labels) if limit is None else min(limit, len(labels))
    x = torch.from_numpy(images[:n].astype(np.float32) / np.float32(255.0))[:, None]
    return x, torch.from_numpy(labels[:n].astype(np.int64))  # (n, 1, rows, cols), (n,)


def load_mnist(root: str | os.PathLike | None = None, limit_train: int | None = None,
               limit_test: int | None = None):
    """MNIST from its four idx files in ``root`` (plain or .gz): (1, 28, 28) in [0, 1].

    ``limit_train`` / ``limit_test`` keep the first N samples of a split (quick runs).
    """

    limits = {"train": check_limit("limit_train", limit_train),
              "test": check_limit("limit_test", limit_test)}
    folder = resolve_root("mnist", root)
    paths = _mnist_paths(folder)
    x_train, y_train = _mnist_split(*paths["train"], limits["train"])
    x_test, y_test = _mnist_split(*paths["test"], limits["test"])
    if x_train.shape[1:] != x_test.shape[1:]:
        raise ValueError(f"{paths['train'][0]} holds images of {tuple(x_train.shape[2:])} "
                         f"pixels but {paths['test'][0]} of {tuple(x_test.shape[2:])}")
    names = ", ".join(p.name for pair in paths.values() for p in pair)
    description = (f"MNIST handwritten digits read from {folder} ({names}): "
                   f"{len(y_train)} train{limited_note(len(y_train), limits['train'])} and "
                   f"{len(y_test)} test{limited_note(len(y_test), limits['test'])} images, "
                   f"{'x'.join(str(d) for d in x_train.shape[1:])} grey levels in [0, 1], "
                   "10 classes")
    return Task(name="mnist", description=description, x_train=x_train, y_train=y_train,
                x_test=x_test, y_test=y_test, input_shape=tuple(x_train.shape[1:]),
                classes=tuple(str(d) for d in range(10)))


# ---------------------------------------------------------------------------- CIFAR-10

_CIFAR_FOLDER = "cifar-10-batches-py"
_CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR_TEST, _CIFAR_META = "test_batch", "batches.meta"
_CIFAR_ROW_BYTES = 3 * 32 * 32  # 1024 red, then 1024 green, then 1024 blue, each row-major

# The only globals a CIFAR batch pickle needs: numpy array and dtype reconstruction, and
# (for pickles re-saved by Python 3 at protocol 2) the codec that rebuilds bytes.
_SAFE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
}


class _BatchUnpickler(pickle.Unpickler):
    """Unpickler that only rebuilds numpy arrays, plain containers and bytes.

    The CIFAR-10 python batches are pickles, and unpickling can run arbitrary code; odtkit
    reads only files the user placed locally, and refuses any other global on top.
    """

    def find_class(self, module: str, name: str):
        if (module, name) not in _SAFE_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}: a CIFAR-10 "
                                         "batch holds only numpy arrays, lists and bytes")
        if module.startswith("numpy.core") or module.startswith("numpy._core"):
            rest = module.split(".", 2)[2]
            for package in ("numpy._core", "numpy.core"):  # numpy >= 2 moved numpy.core
                try:
                    return getattr(importlib.import_module(f"{package}.{rest}"), name)
                except (ImportError, AttributeError):
                    continue
        return super().find_class(module, name)


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            obj = _BatchUnpickler(f, encoding="bytes").load()
    except Exception as err:  # a corrupt pickle can fail in many ways
        raise ValueError(f"{path}: cannot read this CIFAR-10 batch file "
                         f"({type(err).__name__}: {err})") from err
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a pickled dict, found {type(obj).__name__}")
    return obj


def _cifar_folder(root: Path) -> Path:
    """``root/cifar-10-batches-py`` when it exists, else ``root``; all files must be there."""
    folder = root / _CIFAR_FOLDER if (root / _CIFAR_FOLDER).is_dir() else root
    expected = [*_CIFAR_TRAIN, _CIFAR_TEST, _CIFAR_META]
    missing = [name for name in expected if not (folder / name).is_file()]
    if missing:
        raise missing_error("cifar10", folder, expected, missing,
                            note=f"(root may also be the folder that holds {_CIFAR_FOLDER}/)")
    return folder


def _cifar_classes(path: Path) -> tuple[str, ...]:
    names = _unpickle(path).get(b"label_names")
    if not isinstance(names, (list, tuple)) or len(names) < 2 or not all(
            isinstance(n, (bytes, str)) for n in names):
        raise ValueError(f"{path}: b'label_names' must be a list of >= 2 names, got {names!r}")
    return tuple(n.decode("utf-8") if isinstance(n, bytes) else n for n in names)


def _cifar_batch(path: Path, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(data uint8 (N, 3072), labels int64 (N,)) of one batch file, validated."""
    batch = _unpickle(path)
    data, labels = batch.get(b"data"), batch.get(b"labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or \
            data.shape[1] != _CIFAR_ROW_BYTES:
        got = (f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray)
               else type(data).__name__)
        raise ValueError(f"{path}: b'data' must be a uint8 array of shape (N, "
                         f"{_CIFAR_ROW_BYTES}), got {got}")
    try:
        y = np.asarray(labels, dtype=np.int64).reshape(-1)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: b'labels' must be a list of ints ({err})") from err
    if len(y) != len(data):
        raise ValueError(f"{path}: {len(data)} rows of b'data' but {len(y)} b'labels'")
    if len(y) and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"{path}: labels outside 0..{num_classes - 1} (the classes in "
                         f"{_CIFAR_META})")
    return data, y


def _cifar_split(folder: Path, files: tuple[str, ...], num_classes: int,
                 limit: int | None) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Concatenate batches in order, reading only as many as the limit needs."""
    xs, ys, read = [], [], []
    for name in files:
        if limit is not None and sum(len(y) for y in ys) >= limit:
            break
        data, y = _cifar_batch(folder / name, num_classes)
        xs.append(data)
        ys.append(y)
        read.append(name)
    x, y = np.concatenate(xs)[:limit], np.concatenate(ys)[:limit]
    images = x.reshape(-1, 3, 32, 32).astype(np.float32) / np.float32(255.0)  # (N, C, H, W)
    return torch.from_numpy(images), torch.from_numpy(y), read


def load_cifar10(root: str | os.PathLike | None = None, limit_train: int | None = None,
                 limit_test: int | None = None):
    """CIFAR-10 from the python-version batches: (3, 32, 32) RGB in [0, 1], 10 classes.

    ``root`` is the ``cifar-10-batches-py`` folder or the folder holding it. The batches
    are pickles: only read files you placed yourself (a restricted unpickler that rebuilds
    nothing but numpy arrays is used as well). ``limit_*`` keep the first N samples.
    """

    limits = {"train": check_limit("limit_train", limit_train),
              "test": check_limit("limit_test", limit_test)}
    folder = _cifar_folder(resolve_root("cifar10", root))
    classes = _cifar_classes(folder / _CIFAR_META)
    x_train, y_train, read_train = _cifar_split(folder, _CIFAR_TRAIN, len(classes),
                                                limits["train"])
    x_test, y_test, read_test = _cifar_split(folder, (_CIFAR_TEST,), len(classes),
                                             limits["test"])
    description = (f"CIFAR-10 read from {folder} ({', '.join([*read_train, *read_test])}, "
                   f"{_CIFAR_META}): {len(y_train)} train"
                   f"{limited_note(len(y_train), limits['train'])} and {len(y_test)} test"
                   f"{limited_note(len(y_test), limits['test'])} 32x32 RGB images in [0, 1], "
                   f"{len(classes)} classes")
    return Task(name="cifar10", description=description, x_train=x_train, y_train=y_train,
                x_test=x_test, y_test=y_test, input_shape=(3, 32, 32), classes=classes)
