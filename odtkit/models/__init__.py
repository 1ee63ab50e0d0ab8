"""The tiny model zoo: create models by name, example inputs, summaries, pretrained weights.

    model = create("mcunet-tiny", num_classes=10, input_shape=(1, 8, 8))
    print(summary(model, example_input(model)))

Every model carries ``input_shape`` (no batch dimension) and ``config`` (the resolved
``create`` keywords, which is also what a pretrained checkpoint stores).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._checks import check_positive_int, check_real, check_seed, lookup
from .._io import save_atomic
from . import _zoo
from .summary import (
    Call,
    LayerRow,
    Summary,
    backward_macs,
    eval_mode,
    is_layer,
    layer_calls,
    layer_macs,
    summary,
)

__all__ = [
    "names", "create", "example_input", "layer_macs", "backward_macs", "layer_calls", "Call",
    "is_layer", "summary", "Summary", "LayerRow", "pretrained_path", "save_pretrained",
    "eval_mode",
]

# name -> (builder, default input shape, required input rank or None for any rank)
_Builder = Callable[[tuple[int, ...], int, float], nn.Module]
_ZOO: dict[str, tuple[_Builder, tuple[int, ...], int | None]] = {
    "mcunet-tiny": (lambda s, n, w: _zoo.mcunet_tiny(s, n, w), (3, 32, 32), 3),
    "mbv2-tiny": (lambda s, n, w: _zoo.mbv2_tiny(s, n, w), (3, 32, 32), 3),
    "ds-cnn": (lambda s, n, w: _zoo.DSCNN(s[0], n, w), (10, 49), 2),
    "resnet8": (lambda s, n, w: _zoo.resnet8(s[0], n, w), (3, 32, 32), 3),
    "mlp": (lambda s, n, w: _zoo.mlp(s, n, w), (1, 8, 8), None),
}
_RANK_MEANING = {3: "(channels, height, width)", 2: "(channels, length)"}
CONFIG_KEYS = ("name", "num_classes", "in_channels", "width", "input_shape")


def names() -> list[str]:
    """Names of the models in the zoo."""
    return list(_ZOO)


def _canonical(name: str) -> str:
    """The zoo name ``name`` means (case and separators ignored), else a ValueError with
    the closest names."""
    return lookup("model", name, _ZOO)


def _resolve_shape(name: str, in_channels: int | None,
                   input_shape: tuple[int, ...] | None) -> tuple[int, ...]:
    """The model's input shape from its default, ``in_channels`` and ``input_shape``."""
    _, default, rank = _ZOO[name]
    if input_shape is None:
        shape = default
    else:
        if isinstance(input_shape, (str, bytes)) or not hasattr(input_shape, "__iter__"):
            raise ValueError(f"input_shape must be a tuple of positive ints, got {input_shape!r}")
        shape = tuple(input_shape)
        for i, d in enumerate(shape):
            check_positive_int(f"input_shape[{i}]", d)
        want = rank if rank is not None else len(shape)
        if len(shape) != want or not shape:
            meaning = _RANK_MEANING.get(rank, "a non-empty tuple")
            raise ValueError(
                f"input_shape {input_shape!r} does not suit {name!r}: it takes {meaning} "
                f"without the batch dimension, e.g. {default}")
    if in_channels is not None:
        check_positive_int("in_channels", in_channels)
        if input_shape is not None and shape[0] != in_channels:
            raise ValueError(f"in_channels={in_channels} contradicts input_shape={shape}; "
                             "give one of them or make them agree")
        shape = (in_channels, *shape[1:])
    return shape


def create(name: str, num_classes: int = 10, in_channels: int | None = None,
           width: float = 1.0, input_shape: tuple[int, ...] | None = None,
           pretrained: bool = False, seed: int = 0) -> nn.Module:
    """Build zoo model ``name``; same arguments and seed give the same weights.

    ``width`` scales every channel count; ``in_channels`` / ``input_shape`` override the
    default input (no batch dim). ``pretrained=True`` loads ``pretrained_path(name)``;
    arguments left as None then come from the checkpoint's config.
    """
    key = _canonical(name)
    check_positive_int("num_classes", num_classes)
    width = check_real("width", width, low=0, low_open=True)
    check_seed("seed", seed)
    checkpoint = None
    if pretrained:
        checkpoint = _load_checkpoint(key)
        saved = checkpoint["config"]
        if in_channels is None and input_shape is None:
            input_shape = tuple(saved["input_shape"])
    shape = _resolve_shape(key, in_channels, input_shape)
    config = {"name": key, "num_classes": num_classes, "in_channels": shape[0],
              "width": float(width), "input_shape": shape}
    builder = _ZOO[key][0]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = builder(shape, num_classes, float(width))
    model.input_shape = shape
    model.config = config
    if checkpoint is not None:
        _check_config(key, config, checkpoint["config"])
        model.load_state_dict(checkpoint["state_dict"])
    return model


def example_input(model: nn.Module, batch_size: int = 1, seed: int = 0) -> torch.Tensor:
    """Deterministic standard-normal input of shape ``(batch_size, *model.input_shape)``."""
    shape = getattr(model, "input_shape", None)
    if shape is None:
        raise ValueError(f"{type(model).__name__} has no input_shape attribute; "
                         "create it with odtkit.models.create or set model.input_shape")
    check_positive_int("batch_size", batch_size)
    gen = torch.Generator().manual_seed(check_seed("seed", seed))
    return torch.randn(batch_size, *shape, generator=gen)


# ---------------------------------------------------------------- pretrained weights

PRETRAINED_DIR = Path(__file__).resolve().parent / "pretrained"  # package data


def pretrained_path(name: str) -> Path:
    """The pretrained checkpoint of model ``name``: ``odtkit/models/pretrained/<name>.pt``
    (package data, so an installed wheel has it), or under $ODTKIT_PRETRAINED_DIR if set."""
    root = os.environ.get("ODTKIT_PRETRAINED_DIR")
    return (Path(root).expanduser() if root else PRETRAINED_DIR) / f"{_canonical(name)}.pt"


def _load_checkpoint(name: str) -> dict[str, Any]:
    path = pretrained_path(name)
    if not path.is_file():
        raise FileNotFoundError(
            f"no pretrained weights for {name!r} at {path}; build it with `make data` "
            "(runs python data/build_pretrained.py)")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(checkpoint, dict) or not {"config", "state_dict"} <= set(checkpoint):
        raise ValueError(f"{path} is not an odtkit checkpoint (needs 'config' and 'state_dict')")
    return checkpoint


def _check_config(name: str, requested: dict[str, Any], saved: dict[str, Any]) -> None:
    """Raise naming both configs if the requested model differs from the checkpoint's."""
    def norm(cfg: dict[str, Any]) -> dict[str, Any]:
        out = {k: cfg.get(k) for k in CONFIG_KEYS}
        out["input_shape"] = tuple(out["input_shape"] or ())
        out["width"] = float(out["width"]) if out["width"] is not None else None
        return out

    want, have = norm(requested), norm(saved)
    diff = [k for k in CONFIG_KEYS if want[k] != have[k]]
    if diff:
        raise ValueError(
            f"pretrained {name!r} was saved with {have}, but {want} was requested "
            f"(differs in {', '.join(diff)}); call create with the checkpoint's values")


def save_pretrained(model: nn.Module, path: str | os.PathLike, config: dict | None = None,
                    **meta: Any) -> Path:
    """Write {"config", "state_dict", **meta} to ``path`` atomically (`checkpoint.save_atomic`).

    ``config`` defaults to ``model.config``; ``meta`` should hold ``source_task`` (str) and
    ``source_test_acc`` (float) for the shipped checkpoints.
    """
    config = dict(model.config if config is None else config)
    missing = [k for k in CONFIG_KEYS if k not in config]
    if missing:
        raise ValueError(f"config is missing {missing}; it needs {list(CONFIG_KEYS)}")
    config["input_shape"] = tuple(config["input_shape"])
    if tuple(getattr(model, "input_shape", config["input_shape"])) != config["input_shape"]:
        raise ValueError(f"config input_shape {config['input_shape']} differs from the "
                         f"model's {model.input_shape}")
    return save_atomic({"config": config, "state_dict": model.state_dict(), **meta}, path)
