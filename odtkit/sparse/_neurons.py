"""Neurons as budgeted selection sees them: output channels of conv and Linear layers, each
carrying its output slice of the weight and its bias element (as ``Velocity.select`` counts).

A selection under a budget is the longest prefix of an order of all neurons whose
parameters fit (the rule of ``Velocity.select`` and of the reference code of Quelennec et
al., 2023): the order alone tells one method from another.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ._layers import neuron_layers, param_name


@dataclass(frozen=True)
class Neurons:
    """Every neuron of ``layers``, flattened: ``owner[i]`` is the position of neuron i's
    layer in ``layers``, ``local[i]`` its output channel, ``cost[i]`` its parameters."""

    layers: tuple[str, ...]
    owner: torch.Tensor  # (N,) int64
    local: torch.Tensor  # (N,) int64
    cost: torch.Tensor   # (N,) int64
    has_bias: tuple[bool, ...]

    @classmethod
    def of(cls, model: nn.Module) -> Neurons:
        layers = tuple(neuron_layers(model))
        modules = dict(model.named_modules())
        owner, local, cost, bias = [], [], [], []
        for i, name in enumerate(layers):
            m = modules[name]
            channels = m.weight.shape[0]
            with_bias = isinstance(getattr(m, "bias", None), nn.Parameter)
            per = m.weight.numel() // channels + int(with_bias)
            owner.append(torch.full((channels,), i, dtype=torch.long))
            local.append(torch.arange(channels))
            cost.append(torch.full((channels,), per, dtype=torch.long))
            bias.append(with_bias)
        if not layers:
            raise ValueError(f"{type(model).__name__} has no conv or Linear layer whose output "
                             "channels (neurons) could be selected")
        return cls(layers, torch.cat(owner), torch.cat(local), torch.cat(cost), tuple(bias))

    def __len__(self) -> int:
        return len(self.owner)

    def prefix(self, order: torch.Tensor, budget: int) -> torch.Tensor:
        """The neurons of ``order`` (indices into this table) up to the last one whose
        cumulative parameters stay within ``budget``."""
        fits = int((self.cost[order].cumsum(0) <= budget).sum())
        return order[:fits]

    def selection(self, taken: torch.Tensor) -> dict[str, tuple[int, tuple[int, ...]]]:
        """``{weight or bias name: (0, sorted output channels)}`` of the neurons ``taken``."""
        out: dict[str, tuple[int, tuple[int, ...]]] = {}
        for i, name in enumerate(self.layers):
            idx = tuple(sorted(int(j) for j in self.local[taken][self.owner[taken] == i]))
            if not idx:
                continue
            out[param_name(name, "weight")] = (0, idx)
            if self.has_bias[i]:
                out[param_name(name, "bias")] = (0, idx)
        return out


def counts(selection: dict[str, tuple[int, tuple[int, ...]]]) -> dict[str, int]:
    """Layer -> number of selected neurons, read from a neuron selection's weight entries."""
    return {name[: -len(".weight")]: len(idx) for name, (_, idx) in selection.items()
            if name.endswith(".weight")}


def random_order(neurons: Neurons, generator: torch.Generator) -> torch.Tensor:
    """All neurons in an order drawn from ``generator``."""
    return torch.randperm(len(neurons), generator=generator)


def static_order(model: nn.Module, neurons: Neurons) -> torch.Tensor:
    """Layers nearest the output first; inside a layer, neurons by the L2 norm of their
    weight slice, largest first (ties to the lower channel)."""
    modules = dict(model.named_modules())
    order = []
    for i in reversed(range(len(neurons.layers))):
        w = modules[neurons.layers[i]].weight.detach().float()
        norms = w.reshape(w.shape[0], -1).norm(dim=1)
        first = int((neurons.owner < i).sum())  # the layer's neurons are contiguous
        order.append(first + torch.sort(norms, descending=True, stable=True).indices)
    return torch.cat(order)
