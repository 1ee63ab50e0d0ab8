"""The lean engine: a copy of a model whose layers save only what backward needs.

    lean_model = odt.lean(model, odt.plan(model, "bias-only"))   # model itself is untouched

DEVIATION from the shared contract (bytes unchanged): a BatchNorm that needs an
input-sized tensor (train mode, or eval mode with a trainable weight) keeps its *input*,
not the normalized input, by running torch's own batch_norm. The bytes are the same
(input numel x dtype size, plus 2*C float32 mean/invstd in train mode), the gradients
are bit-identical to stock (an x_hat-based backward rounds differently, which exceeds
1e-5 in ill-conditioned nets), and the kept tensor may share storage with another
saver of the same input, exactly as stock.

What each layer saves (shared contract with odtkit.memory):
- Conv1d/2d/3d and Linear: nothing if the weight is frozen (dx needs only the weight, db
  is a sum of dy); their input if the weight trains; no graph at all if nothing needs grad.
  A channel-sparse weight (``plan.channels``) keeps only the input channels its selected
  entries need (input channels of a full conv or Linear, the channels of a depthwise
  conv; an output-channel selection of a full conv keeps the whole input) and gets its
  gradient zero outside the selection (``_sparse``). Other channel-sparse parameters
  (norms, layers left stock) get a gradient hook that zeroes the unselected entries.
- ReLU / ReLU6 / Hardtanh (modules, and F.relu, torch.relu, Tensor.relu, F.relu6,
  F.hardtanh and their in-place forms called in any forward): a bit-packed mask,
  ceil(numel/8) uint8 bytes.
- BatchNorm1d/2d/3d in eval mode with a frozen (or no) weight: nothing. Otherwise as
  above (input, + mean and invstd with batch statistics), running statistics as torch's.
- Everything else is stock PyTorch. Blocks named in ``plan.recompute`` are checkpointed
  (torch.utils.checkpoint, use_reentrant=False) and recomputed in backward; a recomputed
  block's BatchNorms do not update their running statistics a second time.
Norm statistics: a copy of a model in train mode gets the plan's norm mode
(``plan.norm_stats``: "frozen" puts norms with running statistics in eval mode). In train
mode the lean model refuses to run a norm in the other mode (after ``lean.train()`` on a
frozen plan's model, say): ``plan.norm_mode_(lean_model)`` sets it back.
Layers are swapped by exact type (a subclass of nn.Conv2d with its own forward is left
as it is). The swap keeps module and parameter names, so plans and state_dicts carry over.
What each lean layer saves is decided at call time from ``requires_grad``, so changing
``requires_grad`` on the lean model later stays correct. In-place activations stay in
place; an inf/NaN gradient reaching a clamped element gives NaN where torch gives 0.
"""

from __future__ import annotations

import copy
import functools
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils.checkpoint import checkpoint

from .._plan_norms import check_norms, mismatched, mode_error, set_norm_mode_
from ..plans import TrainPlan, as_plan
from ._ops import (
    BatchNormFrozen,
    ClampMask,
    ConvNoInput,
    LinearNoInput,
    pack_bits,
    unpack_bits,
)
from ._sparse import ConvSelect, LinearSelect, Selection, attach

__all__ = ["lean", "is_lean", "LEAN_TYPES", "pack_bits", "unpack_bits", "lean_functions"]

def _wants_graph(*tensors: torch.Tensor | None) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _clamp(x: torch.Tensor, lo: float, hi: float | None, inplace: bool) -> torch.Tensor:
    """Lean clamp/ReLU; the stock op when no graph is needed (nothing saved either way)."""
    if not _wants_graph(x) or not x.is_floating_point():
        if inplace:
            return x.clamp_(min=lo, max=hi)
        return x.clamp(min=lo, max=hi)
    return ClampMask.apply(x, lo, hi, inplace)


# ---------------------------------------------------------------- lean modules


class LeanReLU(nn.ReLU):
    """nn.ReLU saving a bit-packed mask."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _clamp(x, 0.0, None, self.inplace)


class LeanHardtanh(nn.Hardtanh):
    """nn.Hardtanh saving a bit-packed mask of min_val < x < max_val."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _clamp(x, self.min_val, self.max_val, self.inplace)


class LeanReLU6(nn.ReLU6):
    """nn.ReLU6 saving a bit-packed mask of 0 < x < 6."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _clamp(x, 0.0, 6.0, self.inplace)


class LeanLinear(nn.Linear):
    """nn.Linear that saves its input only when its weight trains (of a channel-sparse
    weight, only the selected input features)."""

    lean_channels: Selection | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _wants_graph(x, self.weight, self.bias):
            return F.linear(x, self.weight, self.bias)
        if self.lean_channels is not None:
            return LinearSelect.apply(x, self.weight, self.bias, self.lean_channels)
        return LinearNoInput.apply(x, self.weight, self.bias)


class _LeanConv:
    """Shared forward of the lean Conv1d/2d/3d: padding modes, 'same'/'valid' padding."""

    lean_channels: Selection | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _wants_graph(x, self.weight, self.bias):
            return super().forward(x)  # the stock conv: no graph, nothing saved
        nd = len(self.kernel_size)
        padding = self.padding
        if self.padding_mode != "zeros":
            x = F.pad(x, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            padding = (0,) * nd
        elif padding == "valid":
            padding = (0,) * nd
        elif padding == "same":  # total d*(k-1) per dim, the odd one on the high side
            total = [d * (k - 1) for d, k in zip(self.dilation, self.kernel_size, strict=True)]
            low = [t // 2 for t in total]
            padding = tuple(low)
            if any(t % 2 for t in total):
                x = F.pad(x, [v for lo, t in zip(reversed(low), reversed(total), strict=True)
                              for v in (lo, t - lo)])
                padding = (0,) * nd
        unbatched = x.dim() == nd + 1
        args = (x.unsqueeze(0) if unbatched else x, self.weight, self.bias, self.stride,
                padding, self.dilation, self.groups)
        sel = self.lean_channels
        out = ConvNoInput.apply(*args) if sel is None else ConvSelect.apply(*args, sel)
        return out.squeeze(0) if unbatched else out


class LeanConv1d(_LeanConv, nn.Conv1d):
    """nn.Conv1d that saves its input only when its weight trains."""


class LeanConv2d(_LeanConv, nn.Conv2d):
    """nn.Conv2d that saves its input only when its weight trains."""


class LeanConv3d(_LeanConv, nn.Conv3d):
    """nn.Conv3d that saves its input only when its weight trains."""


class _LeanBatchNorm:
    """Shared forward of the lean BatchNorm1d/2d/3d (same statistics logic as torch's).

    Only eval mode with a frozen weight differs from stock: it saves nothing. Batch
    statistics, or a weight that trains, need an input-sized tensor, so those cases run
    torch's own batch_norm (which keeps the input, plus mean and invstd in train mode).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None \
                else self.momentum
        batch_stats = self.training or (self.running_mean is None and self.running_var is None)
        use_running = not self.training or self.track_running_stats
        mean = self.running_mean if use_running else None
        var = self.running_var if use_running else None
        weight_trains = self.weight is not None and self.weight.requires_grad
        if batch_stats or weight_trains or not _wants_graph(x, self.bias):
            return F.batch_norm(x, mean, var, self.weight, self.bias, batch_stats, factor,
                                self.eps)
        return BatchNormFrozen.apply(x, self.weight, self.bias, mean, var, self.eps)


class LeanBatchNorm1d(_LeanBatchNorm, nn.BatchNorm1d):
    """nn.BatchNorm1d saving nothing in eval mode with a frozen weight."""


class LeanBatchNorm2d(_LeanBatchNorm, nn.BatchNorm2d):
    """nn.BatchNorm2d saving nothing in eval mode with a frozen weight."""


class LeanBatchNorm3d(_LeanBatchNorm, nn.BatchNorm3d):
    """nn.BatchNorm3d saving nothing in eval mode with a frozen weight."""


# stock type -> lean type (exact types only: subclasses may have their own forward)
LEAN_TYPES: dict[type[nn.Module], type[nn.Module]] = {
    nn.ReLU: LeanReLU, nn.ReLU6: LeanReLU6, nn.Hardtanh: LeanHardtanh, nn.Linear: LeanLinear,
    nn.Conv1d: LeanConv1d, nn.Conv2d: LeanConv2d, nn.Conv3d: LeanConv3d,
    nn.BatchNorm1d: LeanBatchNorm1d, nn.BatchNorm2d: LeanBatchNorm2d,
    nn.BatchNorm3d: LeanBatchNorm3d,
}


# ---------------------------------------------------------------- functional calls


# parsers named and ordered like torch's own arguments
def _relu(input: Any, inplace: bool = False) -> tuple:
    return input, 0.0, None, inplace


def _relu_(input: Any) -> tuple:
    return input, 0.0, None, True


def _relu6(input: Any, inplace: bool = False) -> tuple:
    return input, 0.0, 6.0, inplace


def _hardtanh(input: Any, min_val: float = -1.0, max_val: float = 1.0,
              inplace: bool = False) -> tuple:
    if min_val > max_val:
        raise ValueError(f"min_val cannot be greater than max_val, got min_val={min_val!r}, "
                         f"max_val={max_val!r}; swap them")
    return input, float(min_val), float(max_val), inplace


def _hardtanh_(input: Any, min_val: float = -1.0, max_val: float = 1.0) -> tuple:
    return _hardtanh(input, min_val, max_val, True)


# torch callable -> parser of its arguments into (x, lo, hi, inplace)
_ROUTES = {
    F.relu: _relu, torch.relu: _relu, torch.Tensor.relu: _relu,
    torch.relu_: _relu_, torch.Tensor.relu_: _relu_,
    F.relu6: _relu6, F.hardtanh: _hardtanh, F.hardtanh_: _hardtanh_,
}


class _LeanFunctions(TorchFunctionMode):
    """Routes functional ReLU/ReLU6/Hardtanh calls to the mask-saving lean op."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        route = _ROUTES.get(func)
        if route is not None:
            x, lo, hi, inplace = route(*args, **kwargs)
            if type(x) in (torch.Tensor, nn.Parameter):  # subclasses keep their own op
                return _clamp(x, lo, hi, inplace)
        return func(*args, **kwargs)


def _functions_active() -> bool:
    """True if a _LeanFunctions mode is on this thread's stack (then none is pushed again)."""
    stack_of = getattr(torch.overrides, "_get_current_function_mode_stack", None)
    return stack_of is not None and any(isinstance(m, _LeanFunctions) for m in stack_of())


class lean_functions:  # used like a function: `with lean_functions(): ...`
    """Context manager: functional ReLU/ReLU6/Hardtanh calls inside save bit masks."""

    def __enter__(self) -> lean_functions:
        self._mode = None if _functions_active() else _LeanFunctions()
        if self._mode is not None:
            self._mode.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._mode is not None:
            self._mode.__exit__(*exc)


# ---------------------------------------------------------------- forwards


def _lean_forward(module: nn.Module, inner: Any, *args: Any, **kwargs: Any) -> Any:
    """The module's forward (``inner`` if it had one set on the instance, else its class's)
    with functional activations routed to lean ops."""
    with lean_functions():
        if inner is not None:
            return inner(*args, **kwargs)
        return type(module).forward(module, *args, **kwargs)


class _RestoreRunningStats:
    """Undo the running-statistics update of a recomputation (the forward already did it)."""

    def __init__(self, module: nn.Module) -> None:
        self.saved = [(b, b.clone()) for m in module.modules()
                      if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training
                      for b in m.buffers(recurse=False)]

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        with torch.no_grad():
            for buf, value in self.saved:
                buf.copy_(value)


def _recompute_forward(module: nn.Module, inner: Any, *args: Any, **kwargs: Any) -> Any:
    """Checkpointed forward: only the block's inputs are kept; it reruns in backward."""
    if not torch.is_grad_enabled():
        return _lean_forward(module, inner, *args, **kwargs)
    calls = [0]

    def run(*a: Any, **k: Any) -> Any:
        calls[0] += 1
        if calls[0] == 1:
            return _lean_forward(module, inner, *a, **k)
        with _RestoreRunningStats(module):
            return _lean_forward(module, inner, *a, **k)

    return checkpoint(run, *args, use_reentrant=False, **kwargs)


def _root_forward(module: nn.Module, inner: Any, *args: Any, **kwargs: Any) -> Any:
    """The lean model's own forward; in train mode its norms must run in its plan's mode."""
    plan = module.__dict__.get("lean_plan")
    if module.training and plan is not None:
        bad = mismatched(module, plan.norm_stats)
        if bad is not None:
            raise mode_error(*bad, plan.scheme, plan.norm_stats)
    return _lean_forward(module, inner, *args, **kwargs)


def _is_ours(forward: object) -> bool:
    return isinstance(forward, functools.partial) and forward.func in (
        _lean_forward, _recompute_forward, _root_forward)


def _has_own_forward(module: nn.Module) -> bool:
    """True for modules of classes defined outside torch and this engine (custom forwards)."""
    cls = type(module)
    return not cls.__module__.startswith("torch.") and cls not in LEAN_TYPES.values()


def is_lean(model: nn.Module) -> bool:
    """True if ``model`` (or any submodule) was built by ``lean``."""
    return any(type(m) in LEAN_TYPES.values() or _is_ours(m.__dict__.get("forward"))
               for m in model.modules())


def lean(model: nn.Module, plan: TrainPlan | str) -> nn.Module:
    """A copy of ``model`` whose layers save only what backward needs under ``plan``.

    ``plan``: a TrainPlan, or a scheme for ``odt.plan(model, scheme)``. The copy has the
    plan applied (requires_grad), the same parameter names, and checkpoints the modules
    in ``plan.recompute``; ``model`` itself is not modified. If ``model`` is in train
    mode, the copy's norms are in the plan's mode (``plan.norm_stats``).
    """
    plan = as_plan(model, plan)
    modules = dict(model.named_modules())
    for name in plan.recompute:
        if name not in modules or name == "":
            raise ValueError(f"plan.recompute names {name!r}, which is not a submodule of "
                             f"{type(model).__name__}; make the plan for this model")
    check_norms(model, plan.norm_stats)
    out = copy.deepcopy(model)
    plan.apply_(out)
    if out.training:
        set_norm_mode_(out, plan.norm_stats)
    for module in out.modules():
        if type(module) in LEAN_TYPES:
            module.__class__ = LEAN_TYPES[type(module)]
    recompute = set(plan.recompute)
    for name, module in out.named_modules():
        inner = module.__dict__.get("forward")  # a forward set on the instance, if any
        if _is_ours(inner):  # re-leaning a lean model: unwrap
            inner = inner.args[1]
        if name in recompute:
            module.forward = functools.partial(_recompute_forward, module, inner)
        elif name == "":
            module.forward = functools.partial(_root_forward, module, inner)
        elif _has_own_forward(module):
            module.forward = functools.partial(_lean_forward, module, inner)
        elif inner is None:
            module.__dict__.pop("forward", None)
        else:
            module.forward = inner
    attach(out, plan, (LeanLinear, _LeanConv))
    out.lean_plan = plan
    return out
