"""Atomic training checkpoints: a reader sees the old file or the new one, never half of one.

Every checkpoint holds only tensors and plain containers, so it loads with
``torch.load(weights_only=True)``: nothing in it can run code when it is read.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

FORMAT = 1  # bump when the layout of the saved dict changes


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a checkpoint written by ``odt.train`` (safely: weights_only=True, onto the CPU)."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as err:  # torch raises several kinds for a damaged file
        raise ValueError(
            f"checkpoint {str(path)!r} could not be read ({type(err).__name__}: {err}). "
            "Delete it (or pass another checkpoint path) to start training afresh."
        ) from err
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise ValueError(
            f"{str(path)!r} is not an odtkit training checkpoint of format {FORMAT} "
            f"(found format {found!r}). Delete it or pass another checkpoint path."
        )
    return state


def check_fingerprint(saved: dict[str, Any], current: dict[str, Any], path: object) -> None:
    """Raise naming the first field where the checkpoint's config differs from this call."""
    for field in sorted(set(saved) | set(current)):
        old, new = saved.get(field), current.get(field)
        if old != new:
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
