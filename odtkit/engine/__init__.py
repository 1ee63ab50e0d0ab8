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
- MaxPool2d (CPU, dilation 1, at most 256 positions a window, no return_indices): the argmax's
  position within its window, one uint8 per output (torch keeps the input and int64
  indices); gradients bit-identical.
- Dropout (module, train mode): a bit mask of the kept elements (torch keeps the float
  noise); the same random draws, output and gradients as torch's.
- Hardswish / SiLU / GELU: exact by default, and the exact backward needs the whole
  input (f'(x) varies with x wherever x is not saturated), so torch's op runs and keeps
  it. With ``plan.activation_grad == "mobiletl"`` (modules, and F.hardswish, F.silu,
  F.gelu in any forward): MobileTL's sign step (Chiang et al., AAAI 2023), forward exact,
  backward dy * 1[x > 0], a bit-packed mask kept.
- Everything else is stock PyTorch (LayerNorm, attention, recurrent layers, Sigmoid, the
  squeeze-excitation product: what limits lean there is named in the lean memory
  report's notes). Blocks named in ``plan.recompute`` are checkpointed
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
Speed: each lean op is an autograd Function, compiled (``csrc/lean_ops.cpp``, built once by
``odtkit native`` or the first ``lean()`` and loaded from the cache after; ``native``) or,
where no compiler is at hand or ``ODTKIT_NATIVE=0``, in Python (``_ops``): the same ATen
calls, kept tensors, allocations and gradients either way, but the Python ones cost a
Python frame per call and per backward, most of a lean step's excess over stock at batch 1.
A custom forward pushes the functional mode only where it may call a routed activation
itself (``_calls``: a conservative read of its code; the mode costs a Python round trip on
every torch call under it), and lean layers and torch's own leaves run with torch-function
handling off while the mode is pushed; a clamp mask is
written from the output straight into its packed bytes (the compiled loop, or numpy), and
a frozen conv's dx is torch's transposed convolution of dy (a 1x1 conv's: torch's
convolution_backward on a shape-only stand-in). benchmarks/lean.py measures step time.
"""

from __future__ import annotations

import copy
import functools
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .._plan_norms import check_norms, mismatched, mode_error, set_norm_mode_, stat_norms
from ..plans import TrainPlan, as_plan
from . import _layers, native
from ._calls import needs_mode
from ._functional import LeanFunctions, functions_active, lean_functions
from ._layers import (
    LEAN_TYPES,
    SMOOTH_TYPES,
    LeanBatchNorm1d,
    LeanBatchNorm2d,
    LeanBatchNorm3d,
    LeanConv,
    LeanConv1d,
    LeanConv2d,
    LeanConv3d,
    LeanDropout,
    LeanGELU,
    LeanHardswish,
    LeanHardtanh,
    LeanLinear,
    LeanMaxPool2d,
    LeanReLU,
    LeanReLU6,
    LeanSiLU,
)
from ._ops import pack_bits, unpack_bits
from ._sparse import attach


def _use_native(build_missing: bool) -> None:
    """Swap the compiled lean ops in where they are (or, with ``build_missing``, can be) built."""
    if _layers.backend != "native" and native.available(build_missing=build_missing):
        _layers.use_ops("native")


try:  # a build already made is used from the start; a bad ODTKIT_NATIVE is named by lean()
    _use_native(build_missing=False)
except (ValueError, RuntimeError):
    pass

__all__ = ["lean", "is_lean", "LEAN_TYPES", "pack_bits", "unpack_bits", "lean_functions",
           "LeanReLU", "LeanReLU6", "LeanHardtanh", "LeanHardswish", "LeanSiLU", "LeanGELU",
           "LeanDropout", "LeanMaxPool2d", "LeanLinear", "LeanConv1d", "LeanConv2d",
           "LeanConv3d", "LeanBatchNorm1d", "LeanBatchNorm2d", "LeanBatchNorm3d"]

# ---------------------------------------------------------------- forwards


def _lean_forward(module: nn.Module, inner: Any, *args: Any, **kwargs: Any) -> Any:
    """The module's forward (``inner`` if it had one set on the instance, else its class's)
    with functional activations routed to lean ops (the outermost call pushes the mode)."""
    forward = inner if inner is not None else functools.partial(type(module).forward, module)
    if functions_active() or not module.__dict__.get("lean_needs_mode", True):
        return forward(*args, **kwargs)
    with LeanFunctions(module.__dict__.get("lean_activation_grad") == "mobiletl"):
        return forward(*args, **kwargs)


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
        want = plan.norm_stats == "batch"  # a quick look at the norms found by lean() first
        norms = module.__dict__.get("lean_norms")
        if norms is None or any(m.training != want for m in norms):
            bad = mismatched(module, plan.norm_stats)
            if bad is not None:
                raise mode_error(*bad, plan.scheme, plan.norm_stats)
    return _lean_forward(module, inner, *args, **kwargs)


def _quiet_forward(module: nn.Module, inner: Any, *args: Any, **kwargs: Any) -> Any:
    """A stock torch leaf's own forward with torch-function handling off while the lean
    functional mode is pushed: no torch leaf outside LEAN_TYPES calls a routed activation,
    and the mode would add Python work to each of its tensor calls."""
    if _layers._mode_on():
        with torch._C.DisableTorchFunction():
            return type(module).forward(module, *args, **kwargs)
    return type(module).forward(module, *args, **kwargs)


def _is_quiet_leaf(module: nn.Module) -> bool:
    """A module of one of torch's own classes (torch.nn.modules), with no children, that the
    engine does not replace: its forward calls no ReLU/Hardtanh/smooth activation."""
    cls = type(module)
    return (cls.__module__.startswith("torch.nn.modules.") and cls not in LEAN_TYPES.values()
            and not module._modules)


def _is_ours(forward: object) -> bool:
    return isinstance(forward, functools.partial) and forward.func in (
        _lean_forward, _recompute_forward, _root_forward, _quiet_forward)


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
    _use_native(build_missing=True)
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
        elif inner is None and _is_quiet_leaf(module):
            module.forward = functools.partial(_quiet_forward, module, None)
        elif inner is None:
            module.__dict__.pop("forward", None)
        else:
            module.forward = inner
        forward = module.__dict__.get("forward")
        if isinstance(module, SMOOTH_TYPES) or (_is_ours(forward)
                                                and forward.func is not _quiet_forward):
            module.lean_activation_grad = plan.activation_grad
        if _is_ours(forward) and forward.func in (_lean_forward, _root_forward):
            # skip the functional mode where the forward provably calls no routed function
            module.lean_needs_mode = inner is not None or needs_mode(module, type(module).forward)
    attach(out, plan, (LeanLinear, LeanConv))
    out.lean_plan = plan
    out.lean_norms = [m for _, m in stat_norms(out)]
    return out
