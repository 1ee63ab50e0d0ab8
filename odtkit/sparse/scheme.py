"""A sparse-update scheme as a TrainPlan: biases of some layers, weights of others at a
channel ratio, as in "On-Device Training Under 256KB Memory" (Lin et al., 2022).

    plan = odt.sparse.plan(model, biases=2, weights={"features.3": 0.25, "fc": 0.5})
    plan = odt.sparse.plan(model, biases=["fc"], weights={"fc": 1.0}, criterion="random")
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from torch import nn

from .._checks import choice_error
from ..plans import TrainPlan
from ..plans import plan as make_plan
from ._layers import param_name
from .criteria import Probe, select
from .velocity import Velocity


def _bias_layers(model: nn.Module, biases: int | Iterable[str]) -> list[str]:
    with_bias = [n for n, m in model.named_modules()
                 if n and isinstance(getattr(m, "bias", None), nn.Parameter)]
    if isinstance(biases, bool):
        raise TypeError(f"biases must be a number of last layers or a list of layer names, "
                        f"got {biases!r}")
    if isinstance(biases, int):
        if not 0 <= biases <= len(with_bias):
            raise ValueError(f"biases={biases} asks for the biases of the last {biases} layers, "
                             f"but {type(model).__name__} has {len(with_bias)} layers with a "
                             f"bias; use an integer in [0, {len(with_bias)}] or name them")
        return with_bias[len(with_bias) - biases:]
    if isinstance(biases, str):
        raise TypeError(f"biases must be a list of layer names, got the string {biases!r}; "
                        f"wrap it: [{biases!r}]")
    names = list(biases)
    modules = {n for n, _ in model.named_modules() if n}
    for name in names:
        if not isinstance(name, str) or name not in modules:
            raise choice_error("layer (for biases)", name, with_bias)
        if name not in with_bias:
            raise ValueError(f"layer {name!r} has no bias to train; layers with a bias: "
                             f"{with_bias[:8]}{' ...' if len(with_bias) > 8 else ''}")
    return names


def plan(model: nn.Module, biases: int | Iterable[str] = (),
         weights: Mapping[str, float] | None = None, criterion: str = "magnitude-largest",
         seed: int = 0, dim: int | Mapping[str, int] | None = None, precision: str = "fp32",
         probe: Probe | None = None, velocity: Velocity | None = None) -> TrainPlan:
    """A TrainPlan that trains the biases of ``biases`` (layer names, or an int: that many
    last layers with a bias) and the weights of ``weights`` ({layer: channel ratio}), each
    restricted to the channels ``select`` picks by ``criterion`` (a ratio of 1 trains the
    whole weight). Everything else is frozen."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    weights = dict(weights or {})
    bias_names = [param_name(n, "bias") for n in _bias_layers(model, biases)]
    channels = select(model, weights, criterion, dim=dim, seed=seed, probe=probe,
                      velocity=velocity) if weights else {}
    named = dict(model.named_parameters())
    partial = {n: entry for n, entry in channels.items()
               if len(entry[1]) < named[n].shape[entry[0]]}
    trainable = list(dict.fromkeys([*bias_names, *channels]))
    return make_plan(model, trainable, precision=precision, channels=partial or None)
