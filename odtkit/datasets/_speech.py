"""Speech Commands from its extracted folder: one folder of 1 s wavs per word, split lists.

    task = odtkit.datasets.load("speech-commands", words=["yes", "no", "up", "down"])
    task.input_shape   # (40, 51): 40 log-mel bands x 51 frames of 20 ms, for ds-cnn

Splits follow the dataset: files named in testing_list.txt form the test split, those in
validation_list.txt are held out, the rest train (``test_split="validation"`` swaps the
roles of the two lists, for model selection). ``_background_noise_`` is not a word.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .._checks import check_choice, check_seed, choice_error
from . import _audio
from ._files import check_limit, limited_note, missing_error, resolve_root
from .task import Task

_LISTS = {"testing": "testing_list.txt", "validation": "validation_list.txt"}
_CHUNK = 256  # wavs turned into features at once (bounds the memory of raw audio)


def _available_words(root: Path) -> list[str]:
    """Sorted word folders: sub-folders holding .wav files, except _background_noise_ and
    other names starting with '_' or '.'."""
    return sorted(p.name for p in root.iterdir() if p.is_dir() and p.name[0] not in "_."
                  and any(p.glob("*.wav")))


def _expected_text() -> list[str]:
    return ["one folder per word (yes/, no/, ...) of 16 kHz mono 16-bit PCM .wav files",
            *_LISTS.values()]


def _check_root(root: Path) -> list[str]:
    if not root.is_dir():
        raise missing_error("speech-commands", root, _expected_text(), [])
    missing = [name for name in _LISTS.values() if not (root / name).is_file()]
    words = _available_words(root)
    if len(words) < 2:
        missing.append(f"word folders with .wav files (found {len(words)}, need >= 2)")
    if missing:
        raise missing_error("speech-commands", root, _expected_text(), missing)
    return words


def _choose_words(words: Sequence[str] | None, available: list[str]) -> list[str]:
    if words is None:
        return available
    if isinstance(words, str) or not all(isinstance(w, str) for w in words):
        raise TypeError(f"words must be a list of word-folder names, got {words!r}")
    words = list(words)
    for w in words:
        if w not in available:
            raise choice_error("word", w, available)
    if len(set(words)) != len(words):
        raise ValueError(f"words lists a word twice: {words}")
    if len(words) < 2:
        raise ValueError(f"choose at least 2 words (a task needs 2 classes), got {words}")
    return words


def _read_list(root: Path, name: str, words: set[str]) -> set[str]:
    """Entries 'word/file.wav' of a split list that belong to the chosen words; every one
    must exist (a list that does not match the folders would silently move files)."""
    entries = set()
    for line in (root / name).read_text(encoding="utf-8").splitlines():
        entry = line.strip().replace("\\", "/")
        if entry and entry.split("/", 1)[0] in words:
            entries.add(entry)
    absent = sorted(e for e in entries if not (root / e).is_file())
    if absent:
        shown = ", ".join(absent[:3]) + (f" and {len(absent) - 3} more" if len(absent) > 3
                                         else "")
        raise ValueError(f"{root / name} names {len(absent)} file(s) missing under {root}: "
                         f"{shown}; restore them or remove those lines")
    return entries


def _features(root: Path, entries: list[str], n_mels: int) -> torch.Tensor:
    """Log-mel features (N, n_mels, frames) of the wavs, a chunk at a time."""
    frames = _audio.num_frames(_audio.CLIP_SAMPLES, _audio.HOP)
    out = torch.empty(len(entries), n_mels, frames)
    for start in range(0, len(entries), _CHUNK):
        chunk = entries[start:start + _CHUNK]
        waves = torch.stack([_audio.fix_length(_audio.read_wav(root / e)) for e in chunk])
        out[start:start + len(chunk)] = _audio.log_mel_spectrogram(waves, n_mels=n_mels)
    return out


def load_speech_commands(root: str | os.PathLike | None = None,
                         words: Sequence[str] | None = None, limit_train: int | None = None,
                         limit_test: int | None = None, test_split: str = "testing",
                         n_mels: int = _audio.N_MELS, seed: int = 0):
    """Keyword spotting on Speech Commands: log-mel features of shape (n_mels, 51).

    Each wav (16 kHz, mono, 16-bit) is padded with zeros or cropped to 1 s; features are
    log(mel energies + 1e-6) of 30 ms Hann frames every 20 ms (see ``odtkit._audio``).
    ``words`` picks the classes, in that order (default: every word folder, sorted).
    Each split is shuffled with ``seed``; ``limit_*`` keep its first N files (only those
    are read).
    """

    limits = {"train": check_limit("limit_train", limit_train),
              "test": check_limit("limit_test", limit_test)}
    check_choice("test_split", test_split, _LISTS)
    check_seed("seed", seed)
    folder = resolve_root("speech-commands", root)
    chosen = _choose_words(words, _check_root(folder))
    _audio.mel_bins(n_mels)  # validates n_mels early
    test_set = _read_list(folder, _LISTS[test_split], set(chosen))
    other = "validation" if test_split == "testing" else "testing"
    held_out = _read_list(folder, _LISTS[other], set(chosen))

    splits: dict[str, list[tuple[str, int]]] = {"train": [], "test": []}
    for label, word in enumerate(chosen):
        for path in sorted((folder / word).glob("*.wav")):
            entry = f"{word}/{path.name}"
            if entry in test_set:
                splits["test"].append((entry, label))
            elif entry not in held_out:
                splits["train"].append((entry, label))
    rng = np.random.default_rng(seed)
    tensors = {}
    for split, items in splits.items():
        if not items:
            raise ValueError(f"no {split} files for words {chosen} in {folder}: the split "
                             f"lists ({', '.join(_LISTS.values())}) leave none")
        order = rng.permutation(len(items))[:limits[split]]
        items = [items[i] for i in order]
        tensors[f"x_{split}"] = _features(folder, [e for e, _ in items], n_mels)
        tensors[f"y_{split}"] = torch.tensor([lab for _, lab in items], dtype=torch.int64)
    n_train, n_test = len(tensors["y_train"]), len(tensors["y_test"])
    description = (
        f"Speech Commands read from {folder}: {len(chosen)} word folders "
        f"({', '.join(chosen)}), split by {_LISTS[test_split]} (test) and "
        f"{_LISTS[other]} (held out); {n_train} train{limited_note(n_train, limits['train'])}"
        f" and {n_test} test{limited_note(n_test, limits['test'])} clips, each 1 s at "
        f"16 kHz -> log-mel {n_mels} bands x {tensors['x_train'].shape[2]} frames "
        "(30 ms Hann window, 20 ms hop, HTK mel 20-8000 Hz)")
    return Task(name="speech-commands", description=description,
                input_shape=tuple(tensors["x_train"].shape[1:]), classes=tuple(chosen),
                **tensors)
