"""Shared pieces of the local-file loaders: where the files are, limits, helpful errors.

odtkit never downloads anything: these loaders read files the user placed on disk.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from .._checks import check_positive_int

# dataset key -> where its files come from (names of the datasets and publishers, as text)
SOURCES = {
    "mnist": "the MNIST database of handwritten digits (Yann LeCun, Corinna Cortes and "
             "Christopher J. C. Burges): its four idx files, gzipped or not",
    "cifar10": "the CIFAR-10 dataset (Alex Krizhevsky, Vinod Nair and Geoffrey Hinton, "
               "University of Toronto), 'CIFAR-10 python version' archive, extracted",
    "speech-commands": "the Speech Commands dataset (Pete Warden, Google; v0.01 or v0.02, "
                       "CC BY 4.0), archive extracted as is",
}


def data_dir() -> Path:
    """Root of local data files: $ODTKIT_DATA_DIR if set; else the ``data/`` folder of a
    source checkout (beside the package); else ``~/.odtkit/data`` for an installed wheel."""
    env = os.environ.get("ODTKIT_DATA_DIR")
    if env:
        return Path(env).expanduser()
    checkout = Path(__file__).resolve().parents[2] / "data"
    if (checkout / "build_pretrained.py").is_file():
        return checkout
    return Path.home() / ".odtkit" / "data"


def resolve_root(key: str, root: str | os.PathLike | None) -> Path:
    """``root`` as a Path, or ``<data dir>/<key>`` when None (see :func:`data_dir`)."""
    if root is None:
        return data_dir() / key
    if not isinstance(root, (str, os.PathLike)):
        raise TypeError(f"root must be a folder path (str or os.PathLike), got "
                        f"{type(root).__name__} {root!r}")
    return Path(root).expanduser()


def check_limit(what: str, value: object) -> int | None:
    """A ``limit_*`` keyword: None (all samples) or a positive int (``check_positive_int``)."""
    try:
        return check_positive_int(what, value, allow_none=True)
    except ValueError as err:
        raise ValueError(f"{err}; or None for all samples") from None


def missing_error(key: str, folder: Path, expected: Sequence[str],
                  missing: Sequence[str], note: str = "") -> FileNotFoundError:
    """A FileNotFoundError saying which files are missing where, how to point elsewhere and
    where the data come from."""
    where = "the folder does not exist" if not folder.is_dir() else \
        f"missing: {', '.join(missing)}"
    return FileNotFoundError(
        f"{key!r} files not found in {folder} ({where}). Expected there: "
        f"{', '.join(expected)}{(' ' + note) if note else ''}. Put them in that folder, pass "
        f"another folder with odtkit.datasets.load({key!r}, root=...), or set the "
        f"ODTKIT_DATA_DIR environment variable (the files then go in "
        f"$ODTKIT_DATA_DIR/{key}). The data come from {SOURCES[key]}; odtkit downloads "
        "nothing, so fetch them yourself.")


def limited_note(n: int, limit: int | None) -> str:
    """' (first N)' when a limit cut a split, else ''."""
    return f" (first {n})" if limit is not None and n == limit else ""
