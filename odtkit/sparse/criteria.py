"""Which channels of a layer's weight train: the selection criteria of sparse update.

    idx = odt.sparse.select_channels(model, "features.3", 0.25)          # largest norms
    sel = odt.sparse.select(model, {"features.3": 0.25, "fc": 0.5}, "random", seed=0)
    # sel == {"features.3.weight": (1, (0, 5, ...)), "fc.weight": (1, (...))}

"On-Device Training Under 256KB Memory" (Lin et al., 2022) updates a layer's weight at a
channel ratio r: full convs and Linear keep the selected *input* channels (weight dim 1), a
depthwise conv its own channels (dim 0); channels are chosen by weight magnitude (largest or
smallest L2 norm of the slice) or at random. Added here: "gradient" (L2 norm of the weight
gradient's slice on a probe batch under cross-entropy) and "velocity" (|NEq velocity| of the
output channels, from a ``Velocity`` tracker; Quelennec et al., 2023).

k = max(1, round(ratio * channels)) channels are kept (Python's round: halves go to even);
ties go to the lower index, so a selection is the same on every run.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .._checks import check_choice, check_seed
from ._layers import check_ratio, module, param_name, resolve_dim
from .velocity import Velocity

CRITERIA = ("magnitude-largest", "magnitude-smallest", "random", "gradient", "velocity")

Probe = tuple[torch.Tensor, torch.Tensor]


def channel_count(ratio: float, channels: int) -> int:
    """How many of ``channels`` a ratio keeps: max(1, round(ratio * channels))."""
    return max(1, round(ratio * channels))


def _slice_norms(tensor: torch.Tensor, dim: int) -> torch.Tensor:
    """L2 norm of every slice of ``tensor`` along ``dim``: shape (tensor.shape[dim],)."""
    t = tensor.detach().float().movedim(dim, 0)
    return t.reshape(t.shape[0], -1).norm(dim=1)


def _check_probe(probe: object) -> Probe:
    fix = ("pass probe=(x, y): a batch of inputs and their integer class labels, e.g. "
           "probe=(task.x_train[:32], task.y_train[:32])")
    if probe is None:
        raise ValueError(f"criterion='gradient' needs a probe batch; {fix}")
    if (not isinstance(probe, (tuple, list)) or len(probe) != 2
            or not all(isinstance(t, torch.Tensor) for t in probe)):
        raise TypeError(f"probe must be a pair of tensors (x, y), got {type(probe).__name__}; "
                        f"{fix}")
    x, y = probe
    if y.dtype.is_floating_point or y.dim() != 1 or len(y) != len(x):
        raise ValueError(f"probe labels must be a 1-D integer tensor with one label per input "
                         f"(x has {len(x)} rows), got dtype {y.dtype}, shape {tuple(y.shape)}")
    return x, y


def _gradients(model: nn.Module, names: list[str], probe: Probe) -> dict[str, torch.Tensor]:
    """Weight gradients of the named layers under cross-entropy on ``probe``, computed on a
    copy of ``model`` (in its mode), so the model, its .grad and its buffers stay untouched."""
    x, y = probe
    twin = copy.deepcopy(model)
    layers = dict(twin.named_modules())
    weights = [layers[n].weight for n in names]
    for w in weights:
        w.requires_grad_(True)
    loss = F.cross_entropy(twin(x), y)
    grads = torch.autograd.grad(loss, weights, allow_unused=True)
    out = {}
    for name, w, g in zip(names, weights, grads, strict=True):
        out[name] = torch.zeros_like(w) if g is None else g
    return out


def _velocity_scores(velocity: object, name: str, dim: int) -> torch.Tensor:
    if velocity is None:
        raise ValueError("criterion='velocity' needs a NEq velocity tracker: make one before "
                         "training with vel = odt.sparse.Velocity(model, x_val), call "
                         "vel.update() after each epoch, and pass velocity=vel")
    if not isinstance(velocity, Velocity):
        raise TypeError(f"velocity must be an odt.sparse.Velocity, got {type(velocity).__name__}")
    if dim != 0:
        raise ValueError(f"criterion='velocity' scores output channels (neurons, dim=0) of "
                         f"{name!r}, got dim={dim}; leave dim=None or pass dim=0")
    return velocity.velocity_of(name).abs()


def _top(scores: torch.Tensor, k: int, largest: bool) -> tuple[int, ...]:
    """The k best channels, ties to the lower index, sorted."""
    order = torch.sort(scores, descending=largest, stable=True).indices[:k]
    return tuple(sorted(int(i) for i in order))


def _dims(dim: int | Mapping[str, int] | None, name: str) -> object:
    if isinstance(dim, Mapping):
        return dim.get(name)
    return dim


def _select(model: nn.Module, ratios: Mapping[str, float], criterion: str,
            dim: int | Mapping[str, int] | None, seeds: Mapping[str, int],
            probe: Probe | None, velocity: Velocity | None,
            ) -> dict[str, tuple[int, tuple[int, ...]]]:
    """The selection of ``select``, with the random seed of every layer given."""
    layers, dims, counts = {}, {}, {}
    for name, ratio in ratios.items():
        layers[name] = module(model, name)
        given = _dims(dim, name)
        dims[name] = 0 if criterion == "velocity" and given is None else \
            resolve_dim(name, layers[name], given)
        ratio = check_ratio(name, ratio)
        counts[name] = channel_count(ratio, layers[name].weight.shape[dims[name]])
    grads = (_gradients(model, list(layers), _check_probe(probe))
             if criterion == "gradient" else {})
    out = {}
    for name, layer in layers.items():
        d, k = dims[name], counts[name]
        if criterion == "random":
            gen = torch.Generator().manual_seed(seeds[name])
            drawn = torch.randperm(layer.weight.shape[d], generator=gen)[:k]
            chosen = tuple(sorted(int(i) for i in drawn))
        else:
            if criterion.startswith("magnitude"):
                scores = _slice_norms(layer.weight, d)
            elif criterion == "gradient":
                scores = _slice_norms(grads[name], d)
            else:
                scores = _velocity_scores(velocity, name, d)
            chosen = _top(scores, k, largest=criterion != "magnitude-smallest")
        out[param_name(name, "weight")] = (d, chosen)
    return out


def select(model: nn.Module, ratios: Mapping[str, float], criterion: str = "magnitude-largest",
           dim: int | Mapping[str, int] | None = None, seed: int = 0,
           probe: Probe | None = None, velocity: Velocity | None = None,
           ) -> dict[str, tuple[int, tuple[int, ...]]]:
    """Channels of several layers at once: ``{layer: ratio}`` -> ``{weight name: (dim,
    sorted indices)}``, the entries a TrainPlan's ``channels`` takes.

    ``dim``: None (each layer's default), one int for all, or ``{layer: dim}``.
    "random": the layer at position i of ``model.named_modules()`` draws with seed + i, so
    layers of the same width do not get the same channels and the dict's order is irrelevant
    (``select_channels(model, layer, r, "random", seed=seed + i)`` gives the same channels).
    "gradient": one backward pass on ``probe`` for all the layers.
    """
    criterion = check_choice("criterion", criterion, CRITERIA)
    seed = check_seed("seed", seed)
    if not isinstance(ratios, Mapping) or not ratios:
        raise TypeError(f"ratios must be a non-empty mapping {{layer name: ratio}}, e.g. "
                        f"{{'fc': 0.5}}, got {ratios!r}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    position = {n: i for i, (n, _) in enumerate(model.named_modules())}
    seeds = {n: seed + position.get(n, 0) for n in ratios}
    return _select(model, ratios, criterion, dim, seeds, probe, velocity)


def select_channels(model: nn.Module, layer: str, ratio: float,
                    criterion: str = "magnitude-largest", dim: int | None = None, seed: int = 0,
                    probe: Probe | None = None, velocity: Velocity | None = None,
                    ) -> tuple[int, ...]:
    """Sorted indices of the channels of ``layer``'s weight along ``dim`` that train.

    ``dim`` None: 1 (input channels) for full convs and Linear, 0 for depthwise convs and for
    "velocity" (NEq scores output channels). "random" draws with a torch.Generator seeded
    with ``seed`` (same seed, same indices). "gradient" needs ``probe=(x, y)``; "velocity"
    needs ``velocity=`` an updated ``Velocity``.
    """
    criterion = check_choice("criterion", criterion, CRITERIA)
    seed = check_seed("seed", seed)
    if dim is not None and isinstance(dim, Mapping):
        raise TypeError(f"dim must be an integer or None for one layer, got {dim!r}")
    (_, chosen), = _select(model, {layer: ratio}, criterion, dim, {layer: seed}, probe,
                           velocity).values()
    return chosen
