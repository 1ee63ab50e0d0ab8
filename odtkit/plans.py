"""Train plans: which parameters train, at which precision, which blocks are recomputed.

    plan = odt.plan(model, "bias-only")          # or "full", "none", "last:2", "norm-only",
    plan.apply_(model)                           # a list of names, or a predicate(name, param)
    print(plan.describe())

Schemes, by each parameter's role (``_plan_roles``; names as ``model.named_parameters()``):
- "full": every parameter; "none": no parameter (inference only).
- "bias-only": every bias vector: conv, linear and norm biases, an RNN's ``bias_ih_l*`` /
  ``bias_hh_l*``, attention's ``in_proj_bias``.
- "norm-only": weights and biases of normalization layers (BatchNorm*, InstanceNorm*,
  LayerNorm, GroupNorm, RMSNorm).
- "last:K": every parameter of the last K *layers* (``layers(model)``). A layer is a
  module that registers parameters itself (not through children), taken in registration
  order, which is the forward order for the zoo; each layer of a multi-layer LSTM/GRU is
  one, and a transformer block (``nn.TransformerEncoderLayer``, a ViT block: a module
  with an attention among its children) is one. A BatchNorm is a layer of its own, so in
  conv -> BN -> ReLU the BN is the later layer: "last:1" of a model ending in ``Linear``
  is that Linear.
A plan records every parameter name and shape of the model it was made for, so applying
it to another model fails with the names that differ.

Channel-sparse plans (Lin et al. 2022, sparse update at a channel ratio) train only some
slices of a parameter: ``plan.with_channels({"features.3.weight": (1, [0, 2, 5])})``
trains input channels 0, 2 and 5 of that conv weight and keeps its other entries frozen
(``TrainPlan.channels``; ``plan.masks()`` gives the bool masks).

Norm statistics (``TrainPlan.norm_stats``): "batch" trains normalization layers that hold
running statistics (BatchNorm*) in train mode, on the batch's statistics; "frozen" keeps
them in eval mode, on their running statistics, which stay untouched and which a frozen
BatchNorm's backward does not need. Default: "batch" for "full", "frozen" for every
other scheme (bias-only, norm-only, last:K, "none", names, predicates, channel-sparse);
``odt.plan(..., norm_stats=...)`` overrides. ``plan.norm_mode_(model)`` sets the mode and
``with plan.norm_mode(model):`` sets it for a block; odt.train and odt.lean honour it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from . import _plan_text
from ._checks import check_choice, choice_error, lookup
from ._plan_blocks import find_blocks, resolve_recompute
from ._plan_channels import check_channels, entries_of, mask, merge, selected_numel
from ._plan_norms import (
    NORM_STATS,
    check_norm_stats,
    check_norms,
    default_norm_stats,
    norm_mode,
    set_norm_mode_,
)
from ._plan_roles import SCHEMES, layers, scheme_trainable
from .quant.precision import PRECISIONS

__all__ = ["TrainPlan", "plan", "as_plan", "from_names", "layers", "find_blocks", "SCHEMES",
           "PRECISIONS", "NORM_STATS", "ACTIVATION_GRADS"]
ACTIVATION_GRADS = ("exact", "mobiletl")

# the parameter dtype ``check_dtype`` asks for: a model that is itself in that dtype
COMPUTE_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
Predicate = Callable[[str, nn.Parameter], bool]


@dataclass(frozen=True, repr=False)
class TrainPlan:
    """Immutable plan: the parameter names of a model and which of them train.

    ``names``/``shapes`` list every parameter of the model the plan was made for;
    ``recompute`` names the modules the lean engine checkpoints (recomputes in backward).
    ``channels``: (parameter name, dim, sorted unique indices) entries; such a parameter
    trains only those slices along ``dim`` (entries on several dims intersect), the rest
    of it stays frozen. Conv weight (out, in/groups, *kernel) and Linear weight (out, in):
    dim 1 selects input channels, dim 0 output channels (a depthwise conv's channels).
    ``norm_stats``: "frozen" (norms with running statistics in eval mode) or "batch"
    (train mode); None takes the scheme's default. ``activation_grad``: how the lean engine
    backpropagates through smooth activations (Hardswish, SiLU, GELU): "exact", or
    "mobiletl" (MobileTL's sign-based step approximation, a 1-2 bit mask saved).
    """

    scheme: str
    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    trainable: frozenset[str]
    precision: str = "fp32"
    recompute: tuple[str, ...] = ()
    channels: tuple[tuple[str, int, tuple[int, ...]], ...] = ()
    norm_stats: str | None = None
    activation_grad: str = "exact"

    def __post_init__(self) -> None:
        if not isinstance(self.scheme, str) or not self.scheme:
            raise ValueError(f"scheme must be a non-empty string, got {self.scheme!r}")
        if not isinstance(self.names, tuple) or not all(isinstance(n, str) for n in self.names):
            raise TypeError(f"names must be a tuple of strings, got {self.names!r}")
        if len(self.names) != len(self.shapes):
            raise ValueError(f"{len(self.names)} names but {len(self.shapes)} shapes")
        if len(set(self.names)) != len(self.names):
            raise ValueError("parameter names must be unique")
        if not isinstance(self.trainable, frozenset):
            raise TypeError(f"trainable must be a frozenset, got {type(self.trainable).__name__}")
        unknown = sorted(self.trainable - set(self.names))
        if unknown:
            raise ValueError(f"trainable names {unknown} are not parameters of the model")
        object.__setattr__(self, "precision", check_precision(self.precision))
        if not isinstance(self.recompute, tuple) or not all(
                isinstance(r, str) and r for r in self.recompute):
            raise ValueError(f"recompute must be a tuple of module names, got {self.recompute!r}")
        object.__setattr__(self, "channels", check_channels(
            self.channels, self.names, self.shapes, self.trainable))
        object.__setattr__(self, "norm_stats", check_norm_stats(
            default_norm_stats(self.scheme) if self.norm_stats is None else self.norm_stats))
        check_choice("activation_grad", self.activation_grad, ACTIVATION_GRADS)

    # ------------------------------------------------------------------ sizes
    @property
    def total_numel(self) -> int:
        """Number of parameter elements in the model."""
        return sum(math.prod(s) for s in self.shapes)

    @property
    def trainable_numel(self) -> int:
        """Number of parameter elements that train (of a channel-sparse one, the selected)."""
        return sum(selected_numel(s, entries_of(self.channels, n))
                   for n, s in zip(self.names, self.shapes, strict=True) if n in self.trainable)

    @property
    def trainable_share(self) -> float:
        """Fraction (0..1) of parameter elements that train."""
        total = self.total_numel
        return self.trainable_numel / total if total else 0.0

    @property
    def frozen(self) -> frozenset[str]:
        """Names of the parameters that do not train."""
        return frozenset(self.names) - self.trainable

    # ------------------------------------------------------------------ channels
    def with_channels(self, selections: Mapping[str, object]) -> TrainPlan:
        """A copy of this plan whose named parameters train only the selected slices.

        ``selections``: {parameter name: (dim, indices)} (or a list of such pairs per name
        for several dims), e.g. {"fc.weight": (1, range(0, 64, 2))} trains every other input
        channel of ``fc``. An entry for a name and dim the plan already selects replaces it.
        """
        return dataclasses.replace(self, channels=tuple(merge(self.channels, selections)))

    def masks(self, device: torch.device | str | None = None) -> dict[str, torch.Tensor]:
        """{name: bool tensor of the parameter's shape, True where it trains} for every
        channel-sparse parameter (a parameter missing here trains wholly or not at all)."""
        shape_of = dict(zip(self.names, self.shapes, strict=True))
        sparse = dict.fromkeys(n for n, _, _ in self.channels)
        return {n: mask(shape_of[n], entries_of(self.channels, n), device) for n in sparse}

    def with_norm_stats(self, norm_stats: str) -> TrainPlan:
        """A copy of this plan with norm statistics ``norm_stats`` ("frozen" or "batch")."""
        return dataclasses.replace(self, norm_stats=check_norm_stats(norm_stats))

    def with_activation_grad(self, mode: str) -> TrainPlan:
        """A copy of this plan whose lean engine backpropagates smooth activations ``mode``."""
        return dataclasses.replace(self, activation_grad=check_choice(
            "activation_grad", mode, ACTIVATION_GRADS))

    # ------------------------------------------------------------------ norm statistics
    def norm_mode_(self, model: nn.Module) -> nn.Module:
        """Put ``model``'s norms with running statistics in the plan's mode: eval for
        "frozen", train for "batch"; other modules keep theirs. Returns ``model``.
        Raises if a frozen plan meets a BatchNorm without running statistics."""
        self.check_model(model)
        return set_norm_mode_(model, self.norm_stats)

    def norm_mode(self, model: nn.Module) -> AbstractContextManager[nn.Module]:
        """``with plan.norm_mode(model):`` the plan's norm mode inside the block (after
        ``model.train()``, a training step as the plan runs it); every module's own mode
        is restored after."""
        self.check_model(model)
        check_norms(model, self.norm_stats)
        return norm_mode(model, self.norm_stats)

    # ------------------------------------------------------------------ use
    def check_model(self, model: nn.Module) -> None:
        """Raise ValueError if ``model``'s parameter names or shapes differ from the plan's."""
        have = {n: tuple(p.shape) for n, p in model.named_parameters()}
        missing = [n for n in self.names if n not in have]
        names = set(self.names)
        extra = [n for n in have if n not in names]
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"missing from this model: {_short(missing)}")
            if extra:
                parts.append(f"not in the plan: {_short(extra)}")
            raise ValueError("this plan was made for a different model (" + "; ".join(parts)
                             + "); make a new plan with odt.plan(model, ...)")
        bad = [f"{n} {have[n]} (plan: {s})" for n, s in zip(self.names, self.shapes, strict=True)
               if have[n] != s]
        if bad:
            raise ValueError(f"parameter shapes differ from the plan's: {_short(bad)}; "
                             "make a new plan with odt.plan(model, ...)")

    def check_dtype(self, model: nn.Module) -> None:
        """Raise ValueError unless ``model``'s parameters are themselves in the plan
        precision's dtype (fp32, fp16, bf16), what a step in the model's own dtype needs.
        ``odt.train`` does not use it: it keeps fp32 master weights and casts through
        autocast or fp8 (``odtkit.quant.precision``)."""
        want = COMPUTE_DTYPES.get(self.precision)
        if want is None:
            raise ValueError(f"odtkit trains in the model's own dtype and has no "
                             f"{self.precision!r} arithmetic; make the plan with precision='fp32'")
        have = {p.dtype for p in model.parameters() if p.is_floating_point()}
        if have and have != {want}:
            raise ValueError(f"plan precision {self.precision!r} needs {want} parameters, but the "
                             f"model has {sorted(map(str, have))}; cast the model "
                             f"(model.to({want})) or plan with the model's precision")

    def apply_(self, model: nn.Module) -> nn.Module:
        """Set ``requires_grad`` of every parameter of ``model`` by the plan; return ``model``."""
        self.check_model(model)
        for name, p in model.named_parameters():
            p.requires_grad_(name in self.trainable)
        return model

    # ------------------------------------------------------------------ display
    def describe(self) -> str:
        """A table: parameter, shape, numel, trains? (and the selected channels of a
        channel-sparse plan), with totals and the trainable share."""
        return _plan_text.describe(self)

    def _repr_html_(self) -> str:
        return _plan_text.to_html(self)

    def __repr__(self) -> str:
        return _plan_text.to_repr(self)


def _short(items: list[str], n: int = 8) -> str:
    more = f" and {len(items) - n} more" if len(items) > n else ""
    return ", ".join(items[:n]) + more


def check_precision(precision: str) -> str:
    """The canonical name of ``precision`` (one of PRECISIONS; case and separators
    ignored), else a ValueError naming the nearest names and all choices."""
    return lookup("precision", precision, PRECISIONS)


def plan(model: nn.Module, scheme: str | Iterable[str] | Predicate, precision: str = "fp32",
         recompute: str | Iterable[str] | None = None,
         channels: Mapping[str, object] | None = None,
         norm_stats: str | None = None) -> TrainPlan:
    """Plan which parameters of ``model`` train: a scheme name, a list of names or a predicate.

    ``recompute``: module names whose activations the lean engine recomputes in backward,
    or "blocks" for every block ``find_blocks(model)`` finds. ``channels``: {parameter
    name: (dim, indices)}, trainable parameters that train only those slices
    (``TrainPlan.with_channels``). ``norm_stats``: "frozen" or "batch" (see the module
    notes), by default the scheme's.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    precision = check_precision(precision)
    if norm_stats is not None:
        check_norm_stats(norm_stats)
    named = dict(model.named_parameters())
    if isinstance(scheme, str):
        label, trainable = scheme_trainable(model, scheme)
    elif callable(scheme):
        label, trainable = "predicate", set()
        for name, p in named.items():
            verdict = scheme(name, p)
            if not isinstance(verdict, (bool, np.bool_)):
                raise TypeError(f"the predicate must return True or False; for {name!r} it "
                                f"returned {verdict!r}")
            if verdict:
                trainable.add(name)
    elif isinstance(scheme, Iterable) and not isinstance(scheme, (bytes, torch.Tensor)):
        label, trainable = "names", set()
        for name in scheme:
            if not isinstance(name, str):
                raise TypeError(f"parameter names must be strings, got {name!r}")
            if name not in named:
                raise choice_error("parameter", name, named)
            trainable.add(name)
    else:
        raise TypeError(f"scheme must be one of {SCHEMES}, a list of parameter names or a "
                        f"predicate(name, param) -> bool, got {type(scheme).__name__}")
    out = TrainPlan(
        scheme=label, names=tuple(named), shapes=tuple(tuple(p.shape) for p in named.values()),
        trainable=frozenset(trainable), precision=precision,
        recompute=resolve_recompute(model, recompute), norm_stats=norm_stats)
    return out if channels is None else out.with_channels(channels)


def as_plan(model: nn.Module, scheme_or_plan: TrainPlan | str) -> TrainPlan:
    """``scheme_or_plan`` if a TrainPlan, else ``plan(model, scheme)``; checked against ``model``
    (parameter names, shapes and dtype)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(scheme_or_plan, str):
        scheme_or_plan = plan(model, scheme_or_plan)
    elif not isinstance(scheme_or_plan, TrainPlan):
        raise TypeError(f"plan must be a TrainPlan (odt.plan(model, ...)) or a scheme name "
                        f"such as 'bias-only', got {type(scheme_or_plan).__name__}")
    scheme_or_plan.check_model(model)
    scheme_or_plan.check_dtype(model)
    return scheme_or_plan


def from_names(model: nn.Module, names: Iterable[str], precision: str = "fp32",
               recompute: str | Iterable[str] | None = None,
               norm_stats: str | None = None) -> TrainPlan:
    """A plan that trains exactly the parameters named in ``names``."""
    if isinstance(names, str):
        raise TypeError(f"names must be a list of parameter names, got the string {names!r}; "
                        f"wrap it: [{names!r}]")
    return plan(model, list(names), precision=precision, recompute=recompute,
                norm_stats=norm_stats)
