"""Channel-sparse entries of a TrainPlan: checks, masks, counts and their text.

An entry ``(parameter name, dim, indices)`` says that of a trainable parameter only the
slices ``indices`` along ``dim`` train; every other entry of it stays frozen. Several
entries of one parameter (on different dims) intersect. For a conv weight
(out, in/groups, *kernel) dim 1 selects input channels and dim 0 output channels; for a
Linear weight (out, in) likewise; a depthwise conv's channel is its dim 0.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping, Sequence

import torch

from ._checks import choice_error

Entry = tuple[str, int, tuple[int, ...]]


def _where(name: str, dim: int) -> str:
    return f"channels[{name!r}] dim {dim}"


def _as_int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        if isinstance(value, torch.Tensor) and value.ndim == 0 and not value.is_floating_point():
            return int(value)
        raise TypeError(f"{what} must be an integer, got {value!r}")
    return int(value)


def _indices(raw: object, size: int, where: str) -> tuple[int, ...]:
    """Sorted unique ints in [0, size) from ``raw`` (a list, range, tensor or array)."""
    if isinstance(raw, torch.Tensor):
        raw = raw.reshape(-1).tolist()
    if isinstance(raw, (str, bytes)) or not isinstance(raw, Iterable):
        raise TypeError(f"{where}: indices must be a sequence of integers, got {raw!r}")
    values = [_as_int(v, f"{where}: an index") for v in raw]  # type: ignore[union-attr]
    if not values:
        raise ValueError(f"{where}: no index selected; select at least one of 0..{size - 1}, "
                         "or leave the parameter out of the plan to freeze it")
    bad = sorted({v for v in values if not 0 <= v < size})
    if bad:
        raise ValueError(f"{where}: indices {_clip(bad)} out of range; valid indices are "
                         f"0..{size - 1} (size {size})")
    twice = sorted({v for v in values if values.count(v) > 1})
    if twice:
        raise ValueError(f"{where}: indices {_clip(twice)} are selected more than once")
    return tuple(sorted(values))


def _clip(values: Sequence[int], n: int = 8) -> str:
    more = f" and {len(values) - n} more" if len(values) > n else ""
    return "[" + ", ".join(map(str, values[:n])) + "]" + more


def check_channels(channels: object, names: Sequence[str],
                   shapes: Sequence[tuple[int, ...]], trainable: frozenset[str]
                   ) -> tuple[Entry, ...]:
    """The entries, checked and put in canonical form (parameter order, then dim; indices
    sorted), else a ValueError/TypeError naming the bad value and the valid choices."""
    if isinstance(channels, (str, bytes, Mapping)) or not isinstance(channels, Iterable):
        raise TypeError("channels must be a tuple of (parameter name, dim, indices) entries, "
                        f"got {channels!r}; TrainPlan.with_channels builds them from a dict")
    shape_of = dict(zip(names, shapes, strict=True))
    order = {n: i for i, n in enumerate(names)}
    out: dict[tuple[str, int], Entry] = {}
    for entry in channels:
        if not isinstance(entry, (tuple, list)) or len(entry) != 3:
            raise TypeError(f"a channels entry must be (parameter name, dim, indices), "
                            f"got {entry!r}")
        name, dim, raw = entry
        if not isinstance(name, str) or name not in shape_of:
            raise choice_error("parameter in channels", name, names)
        shape = shape_of[name]
        if name not in trainable:
            raise ValueError(f"channels selects entries of {name!r}, which the plan freezes; "
                             "only a trainable parameter can train a subset of its channels. "
                             f"Add {name!r} to the trainable names first, e.g. "
                             f"odt.plan(model, [..., {name!r}])")
        dim = _as_int(dim, f"the dim of channels[{name!r}]")
        if not 0 <= dim < len(shape):
            valid = ", ".join(f"{d} ({_axis(shape, d)}, size {s})" for d, s in enumerate(shape))
            raise ValueError(f"channels[{name!r}] dim {dim}: {name} has shape {shape}, so dim "
                             f"must be one of {valid or 'none (a scalar has no channels)'}")
        if (name, dim) in out:
            raise ValueError(f"channels selects {name!r} along dim {dim} twice; give one "
                             "entry per parameter and dim")
        out[(name, dim)] = (name, dim, _indices(raw, shape[dim], _where(name, dim)))
    return tuple(out[k] for k in sorted(out, key=lambda k: (order[k[0]], k[1])))


def merge(channels: tuple[Entry, ...], selections: Mapping[str, object]) -> list[Entry]:
    """``channels`` with the entries of ``selections`` ({name: (dim, indices)}, or a list of
    such pairs per name) added; an entry for the same name and dim is replaced."""
    if not isinstance(selections, Mapping):
        raise TypeError(f"selections must be a dict {{parameter name: (dim, indices)}}, "
                        f"got {type(selections).__name__}")
    new: list[Entry] = []
    for name, spec in selections.items():
        pairs = spec if isinstance(spec, list) else [spec]
        for pair in pairs:
            if not isinstance(pair, tuple) or len(pair) != 2:
                raise TypeError(f"selections[{name!r}] must be (dim, indices), e.g. "
                                f"(1, [0, 2, 5]), or a list of such pairs; got {pair!r}")
            new.append((name, pair[0], pair[1]))  # type: ignore[arg-type]
    replaced = {(n, d) for n, d, _ in new if isinstance(d, int)}
    return [e for e in channels if (e[0], e[1]) not in replaced] + new


def entries_of(channels: tuple[Entry, ...], name: str) -> list[tuple[int, tuple[int, ...]]]:
    """(dim, indices) of every entry of parameter ``name``."""
    return [(d, idx) for n, d, idx in channels if n == name]


def selected_numel(shape: tuple[int, ...], entries: list[tuple[int, tuple[int, ...]]]) -> int:
    """Elements of a tensor of ``shape`` that train under ``entries``."""
    sizes = list(shape)
    for dim, idx in entries:
        sizes[dim] = len(idx)
    return math.prod(sizes)


def frozen_slices(shape: tuple[int, ...], entries: list[tuple[int, tuple[int, ...]]],
                  device: torch.device | str | None = None) -> tuple[torch.Tensor, ...]:
    """Per entry, a bool tensor that broadcasts to ``shape`` (size 1 but on its dim): True
    at the slices it leaves frozen. An element trains where none is True; zeroing a
    gradient is ``for off in offs: grad.masked_fill_(off, 0)``, at sum(shape[dim]) bytes
    of masks rather than numel."""
    out = []
    for dim, idx in entries:
        off = torch.ones(shape[dim], dtype=torch.bool, device=device)
        off[list(idx)] = False
        view = [1] * len(shape)
        view[dim] = shape[dim]
        out.append(off.view(view))
    return tuple(out)


def mask(shape: tuple[int, ...], entries: list[tuple[int, tuple[int, ...]]],
         device: torch.device | str | None = None) -> torch.Tensor:
    """Bool tensor of ``shape``: True where an entry trains (all True without entries)."""
    out = torch.ones(shape, dtype=torch.bool, device=device)
    for off in frozen_slices(shape, entries, device):
        out &= ~off
    return out


def zero_frozen_(tensor: torch.Tensor, offs: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """``tensor`` with every element that ``offs`` (``frozen_slices``) freezes set to 0."""
    for off in offs:
        tensor.masked_fill_(off, 0)
    return tensor


def _axis(shape: tuple[int, ...], dim: int) -> str:
    if len(shape) == 1:
        return "channels"
    return {0: "out", 1: "in"}.get(dim, f"kernel dim {dim - 2}" if len(shape) > 2 else "")


def format_indices(idx: Sequence[int], limit: int = 40) -> str:
    """'0-3, 7, 9-12': runs joined, cut with '...' past ``limit`` characters."""
    runs: list[str] = []
    start = prev = idx[0]
    for v in [*idx[1:], None]:
        if v is not None and v == prev + 1:
            prev = v
            continue
        runs.append(str(start) if start == prev else f"{start}-{prev}")
        if v is not None:
            start = prev = v
    text = ", ".join(runs)
    if len(text) <= limit:
        return text
    cut = text[:limit].rsplit(", ", 1)[0]
    return f"{cut}, ..."


def describe_entries(shape: tuple[int, ...], entries: list[tuple[int, tuple[int, ...]]]) -> str:
    """'in 3/8 (38%): 0, 2, 5' per entry, joined by '; '."""
    parts = []
    for dim, idx in entries:
        size = shape[dim]
        parts.append(f"{_axis(shape, dim) or f'dim {dim}'} {len(idx)}/{size} "
                     f"({100 * len(idx) / size:.0f}%): {format_indices(idx)}")
    return "; ".join(parts)
