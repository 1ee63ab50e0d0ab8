"""Atomic, verified training checkpoints: a reader sees the old file or the new one, never
half of one, and a file changed after it was written is refused, not trained on.

Every checkpoint holds only tensors and plain containers, so it loads with
``torch.load(weights_only=True)``: nothing in it can run code when it is read. It also
holds ``sha256``, a digest of a canonical serialization of everything else in it (every
tensor's dtype, shape and bytes; every number, string and key), checked on load.
"""

from __future__ import annotations

import hashlib
import os
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._io import save_atomic

FORMAT = 2  # bump when the layout of the saved dict changes (2: sha256 checksum)
KEYS = ("format", "config", "model", "optimizer", "data_rng", "rng", "history", "loop")
_FRESH = "Delete it (or pass another checkpoint path) to start training afresh."


def save_checkpoint(state: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write ``state`` (with its format and checksum added) atomically to ``path``."""
    body = {"format": FORMAT, **state}
    return save_atomic({**body, "sha256": checksum(body)}, path)


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and verify a checkpoint written by ``odt.train`` (weights_only, onto the CPU).

    Raises ValueError naming the file if it cannot be read, is of another format, lacks a
    part, or fails its checksum (changed, damaged or truncated after it was written).
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"checkpoint {str(path)!r} is a directory; pass a file path, e.g. "
                         f"checkpoint={str(path / 'run.pt')!r}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as err:  # torch raises several kinds for a damaged file
        raise ValueError(f"checkpoint {str(path)!r} could not be read ({type(err).__name__}: "
                         f"{err}); it is damaged or truncated. {_FRESH}") from err
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"{str(path)!r} is not an odtkit training checkpoint of format "
                         f"{FORMAT} (found format {found!r}). {_FRESH}")
    missing = [key for key in (*KEYS, "sha256") if key not in state]
    if missing:
        raise ValueError(f"checkpoint {str(path)!r} lacks {', '.join(missing)}; it was not "
                         f"written by odt.train or was edited. {_FRESH}")
    stored = state.pop("sha256")
    actual = checksum(state)
    if stored != actual:
        raise ValueError(f"checkpoint {str(path)!r} fails its checksum (stored sha256 "
                         f"{str(stored)[:16]}..., contents hash to {actual[:16]}...): it was "
                         f"changed or damaged after it was written. {_FRESH}")
    return state


def checksum(state: Any) -> str:
    """sha256 hex digest of a canonical serialization of ``state`` (tensors, numbers,
    strings, None, and lists, tuples and dicts of them; dict keys in sorted order)."""
    digest = hashlib.sha256()
    _feed(digest, state)
    return digest.hexdigest()


def _feed(digest: Any, value: Any) -> None:
    """Type-tagged, length-prefixed bytes of ``value``: distinct states give distinct streams."""
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous().reshape(-1)
        raw = t.view(torch.uint8).numpy().tobytes() if t.numel() else b""
        _tag(digest, b"T", f"{t.dtype}{tuple(value.shape)}".encode())
        _tag(digest, b"B", raw)
    elif isinstance(value, Mapping):
        _tag(digest, b"D", str(len(value)).encode())
        for key in sorted(value, key=repr):
            _feed(digest, key)
            _feed(digest, value[key])
    elif isinstance(value, (list, tuple)):  # a round trip may turn tuples into lists
        _tag(digest, b"L", str(len(value)).encode())
        for item in value:
            _feed(digest, item)
    elif value is None or isinstance(value, (bool, int, float, str)):
        _tag(digest, type(value).__name__[:1].encode(), repr(value).encode())
    else:
        raise TypeError(f"a checkpoint holds tensors and plain values only, got "
                        f"{type(value).__name__}")


def _tag(digest: Any, kind: bytes, data: bytes) -> None:
    digest.update(kind + len(data).to_bytes(8, "little") + data)


def check_fingerprint(saved: dict[str, Any], current: dict[str, Any], path: object) -> None:
    """Raise naming the first field where the checkpoint's run differs from this call (for
    the module types: the first module that differs)."""
    for field in sorted(set(saved) | set(current)):
        old, new = saved.get(field), current.get(field)
        if old == new:
            continue
        if field == "modules" and isinstance(old, list) and isinstance(new, list):
            at = next((i for i, (a, b) in enumerate(zip(old, new, strict=False)) if a != b),
                      min(len(old), len(new)))
            old = old[at] if at < len(old) else "nothing"
            new = new[at] if at < len(new) else "nothing"
            field = "module"
        raise ValueError(
            f"checkpoint {str(path)!r} was written with {field}={_short(old)}, but this "
            f"call has {field}={_short(new)}. Resume with the same {field}, or delete the "
            "checkpoint (or pass another path) to start afresh."
        )


def _short(value: object, limit: int = 160) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 4] + " ..."


def rng_state(device: torch.device) -> dict[str, Any]:
    """Global RNG states (torch, CUDA if training there, Python, NumPy) as plain data."""
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": {
            "name": str(np_name),
            "keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "cached_gaussian": float(np_gauss),
        },
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    """Restore what :func:`rng_state` saved."""
    torch.set_rng_state(state["torch"])
    random.setstate(_as_tuples(state["python"]))
    npst = state["numpy"]
    keys = npst["keys"].numpy().astype(np.uint32)
    np.random.set_state(
        (npst["name"], keys, npst["pos"], npst["has_gauss"], npst["cached_gaussian"])
    )
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _as_tuples(value: Any) -> Any:
    """random.setstate wants tuples all the way down; a round trip may give lists."""
    if isinstance(value, (list, tuple)):
        return tuple(_as_tuples(v) for v in value)
    return value
