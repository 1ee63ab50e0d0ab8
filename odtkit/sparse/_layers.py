"""Layers as the sparse subpackage sees them: a module name, its weight, its channels."""

from __future__ import annotations

from torch import nn

from .._checks import check_int, check_real, choice_error

# modules whose output channels are neurons in the NEq sense (weight dim 0 = output)
NEURON_TYPES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def module(model: nn.Module, name: object) -> nn.Module:
    """The submodule called ``name`` (as ``model.named_modules()`` spells it), with a weight."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    modules = {n: m for n, m in model.named_modules() if n}
    if not isinstance(name, str) or name not in modules:
        raise choice_error("layer", name, modules)
    found = modules[name]
    weight = getattr(found, "weight", None)
    if not isinstance(weight, nn.Parameter):
        with_weight = [n for n, m in modules.items()
                       if isinstance(getattr(m, "weight", None), nn.Parameter)]
        raise ValueError(
            f"layer {name!r} ({type(found).__name__}) has no weight parameter to select "
            f"channels of; name a layer with a weight, e.g. one of {with_weight[:5]}")
    return found


def is_depthwise(layer: nn.Module) -> bool:
    """A depthwise conv: one filter group per input channel (groups == in_channels > 1)."""
    return (isinstance(layer, nn.modules.conv._ConvNd) and layer.groups > 1
            and layer.groups == layer.in_channels)


def default_dim(layer: nn.Module) -> int:
    """Input channels (dim 1) of full convs and Linear, as the 256KB sparse update selects
    them; a depthwise conv's own channels (dim 0); dim 0 of a one-dimensional weight."""
    if is_depthwise(layer) or layer.weight.dim() == 1:
        return 0
    return 1


def resolve_dim(name: str, layer: nn.Module, dim: object) -> int:
    """``dim`` checked against the layer's weight, or its default when None."""
    if dim is None:
        return default_dim(layer)
    ndim = layer.weight.dim()
    try:
        return check_int("dim", dim, low=0, high=ndim - 1)
    except (TypeError, ValueError):
        raise ValueError(f"dim for layer {name!r} must be an integer in [0, {ndim - 1}] (its "
                         f"weight has shape {tuple(layer.weight.shape)}), got dim={dim!r}; "
                         "leave dim=None for the layer's default") from None


def check_ratio(name: str, ratio: object) -> float:
    """A channel ratio in (0, 1], else an error naming the layer and the value."""
    try:
        return check_real("ratio", ratio, low=0.0, high=1.0, low_open=True)
    except (TypeError, ValueError):
        raise ValueError(f"ratio for layer {name!r} must be a number in (0, 1] (the share of "
                         f"its channels that train, e.g. 0.25), got {ratio!r}") from None


def param_name(layer_name: str, attr: str) -> str:
    """The parameter name ``named_parameters()`` gives a layer's ``weight`` or ``bias``."""
    return f"{layer_name}.{attr}"


def neuron_layers(model: nn.Module) -> list[str]:
    """Names of the conv and Linear layers, in registration order: NEq's neurons live there."""
    return [n for n, m in model.named_modules()
            if n and isinstance(m, NEURON_TYPES) and isinstance(m.weight, nn.Parameter)]
