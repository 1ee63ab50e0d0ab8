"""NEq: how fast each neuron's outputs on a fixed validation batch still change.

    vel = odt.sparse.Velocity(model, x_val)     # records the outputs once, before training
    for epoch in range(epochs):
        ...train one epoch...
        vel.update()                            # delta and velocity of every neuron
        sel = vel.select(0.151)                 # neurons to train next, 15.1% of parameters

Bragagnolo et al., "To update or not to update? Neurons at equilibrium in deep models"
(NeurIPS 2022). A neuron is an output channel of a conv or an output unit of a Linear. After
epoch t, with y_i^t all outputs of neuron i on the validation batch as one vector (every
sample, every spatial position):

    phi_i^t   = cos(y_i^t, y_i^{t-1})           (1 when both are zero: a dead neuron rests)
    delta_i^t = 1 - phi_i^t
    v_i^t     = mu * v_i^{t-1} - (delta_i^{t-1} - delta_i^t),  v^0 = 0, delta^0 = 0
    frozen    : |v_i^t| < eps                    (mu = 0.5, eps = 1e-3 in the paper)

The recursion is the one of the authors' reference implementation (EIDOSLAB/NEq), on which
the budgeted selection of Quelennec et al. (2023) is built. The paper prints it as
v^t = Delta phi^t - mu v^{t-1} with Delta phi^t = phi^t - phi^{t-1} = delta^{t-1} - delta^t;
both give |v^1| = delta^1 after the first epoch and differ in the sign of the memory term
afterwards. The reference code compares conv outputs sample by sample over spatial positions
and averages; here every output of the neuron forms one vector, as the paper words it.

Static selection: call ``select`` once (after the first epoch) and keep it. Dynamic
re-selection, as Quelennec et al. do: call ``update()`` then ``select(share)`` after every
epoch and train the next epoch with the new selection; the budget stays the same. Before the
first update there is no velocity: train the first epoch with another criterion under the
same budget (``odt.sparse.select(model, ..., "random")``) or with everything.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from .._checks import check_real, closest
from ._layers import NEURON_TYPES, module, neuron_layers, param_name
from .budget import budget_params


def neuron_delta(previous: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
    """1 - cosine similarity of each row (a neuron's outputs, shape (C, M)) between two
    epochs; 0 when both rows are zero, 1 when only one is."""
    if previous.shape != current.shape or previous.dim() != 2:
        raise ValueError(f"outputs must be two (neurons, values) tensors of one shape, got "
                         f"{tuple(previous.shape)} and {tuple(current.shape)}")
    a, b = previous.double(), current.double()
    na, nb = a.norm(dim=1), b.norm(dim=1)
    denom = na * nb
    cos = torch.where(denom > 0, (a * b).sum(1) / denom.clamp_min(1e-300),
                      torch.zeros_like(denom))
    cos = torch.where((na == 0) & (nb == 0), torch.ones_like(cos), cos).clamp(-1.0, 1.0)
    return (1.0 - cos).float()


class Velocity:
    """Per-neuron NEq delta and velocity of ``model``'s conv and Linear layers (or of
    ``layers``), measured on the fixed validation batch ``x_val``.

    Outputs are recorded with forward hooks under ``torch.no_grad()`` in eval mode; every
    module's mode is restored and the hooks removed after each recording.
    """

    def __init__(self, model: nn.Module, x_val: torch.Tensor, mu: float = 0.5,
                 eps: float = 1e-3, layers: Iterable[str] | None = None) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(x_val, torch.Tensor):
            raise TypeError(f"x_val must be a tensor (a fixed validation batch), got "
                            f"{type(x_val).__name__}")
        self.mu = check_real("mu", mu, low=0.0, high=1.0, high_open=True)
        self.eps = check_real("eps", eps, low=0.0)
        self._model = model
        self._x = x_val
        self.layers = self._resolve_layers(model, layers)
        self._outputs = self._record()
        self._delta: dict[str, torch.Tensor] | None = None
        self._velocity: dict[str, torch.Tensor] | None = None
        self.updates = 0

    @staticmethod
    def _resolve_layers(model: nn.Module, layers: Iterable[str] | None) -> tuple[str, ...]:
        found = neuron_layers(model)
        if layers is None:
            if not found:
                raise ValueError(f"{type(model).__name__} has no conv or Linear layer whose "
                                 "neurons NEq could follow")
            return tuple(found)
        if isinstance(layers, str):
            raise TypeError(f"layers must be a list of layer names, got the string "
                            f"{layers!r}; wrap it: [{layers!r}]")
        names = list(layers)
        for name in names:
            if not isinstance(module(model, name), NEURON_TYPES):
                raise ValueError(f"layer {name!r} is a {type(module(model, name)).__name__}; "
                                 f"NEq neurons are output channels of conv and Linear layers, "
                                 f"e.g. {found[:5]}")
        if not names or len(set(names)) != len(names):
            raise ValueError(f"layers must name each layer once, got {names!r}")
        order = {n: i for i, n in enumerate(found)}
        return tuple(sorted(names, key=order.__getitem__))

    def _record(self) -> dict[str, torch.Tensor]:
        """Each layer's outputs on the validation batch: (neurons, values) tensors."""
        modules = dict(self._model.named_modules())
        captured: dict[str, list[torch.Tensor]] = {}

        def hook_for(name: str, channel_dim: int):
            def hook(_mod: nn.Module, _inp: object, out: torch.Tensor) -> None:
                y = out.detach().float().movedim(channel_dim, 0)
                captured.setdefault(name, []).append(y.reshape(y.shape[0], -1).clone())
            return hook

        handles = [modules[n].register_forward_hook(
            hook_for(n, -1 if isinstance(modules[n], nn.Linear) else 1)) for n in self.layers]
        modes = [(m, m.training) for m in self._model.modules()]
        try:
            self._model.eval()
            with torch.no_grad():
                self._model(self._x)
        finally:
            for handle in handles:
                handle.remove()
            for m, training in modes:
                m.training = training
        silent = [n for n in self.layers if n not in captured]
        if silent:
            raise ValueError(f"layers {silent} were not called by the model's forward on x_val; "
                             "track only layers the forward uses (layers=[...])")
        return {n: torch.cat(captured[n], dim=1) for n in self.layers}

    def update(self) -> dict[str, torch.Tensor]:
        """Record the outputs after an epoch; update and return every neuron's velocity."""
        current = self._record()
        zeros = {n: torch.zeros(y.shape[0]) for n, y in current.items()}
        before = self._delta or zeros
        speed = self._velocity or zeros
        delta = {n: neuron_delta(self._outputs[n], current[n]) for n in self.layers}
        self._velocity = {n: self.mu * speed[n] - (before[n] - delta[n]) for n in self.layers}
        self._delta, self._outputs = delta, current
        self.updates += 1
        return self.velocity

    def _measured(self, what: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
        if what is None:
            raise RuntimeError("no epoch measured yet: train an epoch, then call .update()")
        return {n: t.clone() for n, t in what.items()}

    @property
    def delta(self) -> dict[str, torch.Tensor]:
        """Layer -> 1 - cosine similarity of each neuron's outputs over the last epoch."""
        return self._measured(self._delta)

    @property
    def velocity(self) -> dict[str, torch.Tensor]:
        """Layer -> each neuron's NEq velocity after the last update."""
        return self._measured(self._velocity)

    def velocity_of(self, layer: str) -> torch.Tensor:
        """The velocity of one tracked layer's neurons."""
        if layer not in self.layers:
            near = closest(str(layer), self.layers)
            hint = f" Did you mean {', '.join(repr(n) for n in near)}?" if near else ""
            raise ValueError(f"layer {layer!r} is not tracked by this Velocity, which follows "
                             f"{list(self.layers)}.{hint} Track it: Velocity(model, x_val, "
                             f"layers=[..., {layer!r}]), or leave layers=None for every conv "
                             "and Linear layer")
        return self.velocity[layer]

    def frozen(self) -> dict[str, torch.Tensor]:
        """Layer -> boolean mask of the neurons at equilibrium (|v| < eps)."""
        return {n: v.abs() < self.eps for n, v in self.velocity.items()}

    def neuron_params(self) -> dict[str, int]:
        """Layer -> parameters one neuron carries: its output slice of the weight plus its
        bias element."""
        modules = dict(self._model.named_modules())
        out = {}
        for n in self.layers:
            m = modules[n]
            per = m.weight.numel() // m.weight.shape[0]
            out[n] = per + (1 if isinstance(getattr(m, "bias", None), nn.Parameter) else 0)
        return out

    def select(self, budget_share: float) -> dict[str, tuple[int, tuple[int, ...]]]:
        """Neurons with the largest |velocity|, in that order, while the parameters they carry
        stay within ``budget_share`` of the model's parameters: ``{weight or bias name:
        (0, sorted output-channel indices)}``. Ties go to the earlier layer, then the lower
        index. The selection is the longest such prefix that fits (no smaller neuron further
        down fills the rest); frozen neurons (|v| < eps) are taken only if the budget reaches
        them. ``odt.plan(model, list(sel), channels=sel)`` makes it a TrainPlan."""
        budget = budget_params(self._model, budget_share)
        speed = self.velocity
        per = self.neuron_params()
        scores = torch.cat([speed[n].abs() for n in self.layers])
        costs = torch.cat([torch.full((len(speed[n]),), per[n], dtype=torch.long)
                           for n in self.layers])
        owner = torch.cat([torch.full((len(speed[n]),), i, dtype=torch.long)
                           for i, n in enumerate(self.layers)])
        local = torch.cat([torch.arange(len(speed[n])) for n in self.layers])
        order = torch.sort(scores, descending=True, stable=True).indices
        taken = order[: int((costs[order].cumsum(0) <= budget).sum())]
        modules = dict(self._model.named_modules())
        out: dict[str, tuple[int, tuple[int, ...]]] = {}
        for i, n in enumerate(self.layers):
            idx = tuple(sorted(int(j) for j in local[taken][owner[taken] == i]))
            if not idx:
                continue
            out[param_name(n, "weight")] = (0, idx)
            if isinstance(getattr(modules[n], "bias", None), nn.Parameter):
                out[param_name(n, "bias")] = (0, idx)
        return out

    def __repr__(self) -> str:
        return (f"Velocity({len(self.layers)} layers, mu={self.mu:g}, eps={self.eps:g}, "
                f"updates={self.updates})")
