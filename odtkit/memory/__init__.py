"""Training memory: an analytic estimate and an exact measurement of the same numbers.

    est = odt.estimate(model, x, "bias-only", optimizer="sgd-m", engine="lean")
    meas = odt.measure(model, x, "bias-only", optimizer="sgd-m", engine="lean")
    print(est.table()); print(odt.memory.compare(est, meas))

Four categories, in bytes: ``weights`` (parameters and buffers), ``gradients``,
``optimizer`` (its state after one step) and ``activations`` (distinct tensors autograd
keeps for backward, parameters and buffers excluded). ``peak_bytes`` is the most tensor
bytes alive at once during forward, loss, backward and the optimizer step, weights
included, read as each top-level op returns (what an op allocates and frees inside itself,
a kernel's scratch space or autocast's copy of a frozen weight, is not counted).
``allocator_peak_bytes`` is the allocator's peak, that scratch included: measured from
torch.profiler's memory events, estimated op by op with the scratch of the kernels that
have their own (``_scratch``). ``device.fit`` checks a PyTorch device against it.

The estimate never runs the model's arithmetic: it traces one forward pass on the meta
device (``_trace``; under ``torch.autocast`` at bf16/fp16), applies per-op rules of what
autograd or the lean engine keeps (``_rules``, ``_rules_nn``) and plays the step through
(``_step``, the optimizer and loss scaler in ``_update``). Only to size a kernel's own
scratch does it run that one kernel, once per shape, on zeros. The measurement runs one
real step (``_measure``). Lab 01 compares the two.
"""

from __future__ import annotations

import contextlib
import copy

import torch
from torch import nn

from .._checks import check_choice
from ..plans import TrainPlan, as_plan
from ..plans import plan as make_plan
from ..training.optim import check_optimizer, state_copies
from ._measure import run_step
from ._peak import PEAK_COMPONENTS, from_categories
from ._precision import (
    AUTOCAST,
    FP8,
    FP8_NOTE,
    INT8_NOTE,
    check_precision_model,
    int8_step,
    is_int8_model,
    step_setup,
)
from ._report import CATEGORIES, ENGINES, LayerMemory, MemoryReport, compare
from ._rules_lean import lean_notes
from ._sparse import masks_for
from ._sparse import notes as sparse_notes
from ._step import play_step
from ._trace import DtypeMismatch, UnsupportedOperation, cached_trace

__all__ = [
    "estimate", "measure", "compare", "MemoryReport", "LayerMemory", "CATEGORIES", "ENGINES",
    "PEAK_COMPONENTS", "UnsupportedOperation",
]

# ---------------------------------------------------------------- validation


def _prepare(model: nn.Module, example_input: torch.Tensor, plan: TrainPlan | str,
             optimizer: str, engine: str) -> TrainPlan:
    if not isinstance(model, nn.Module):  # before is_lean walks its modules
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    check_optimizer(optimizer)
    check_choice("engine", engine, ENGINES)
    from ..engine import is_lean

    if is_lean(model):
        raise ValueError("this model was already made lean by odt.lean; pass the original "
                         "model with engine='lean' instead")
    if isinstance(plan, str):  # an Int8Model trains at int8, any other model at fp32
        plan = make_plan(model, plan, precision="int8" if is_int8_model(model) else "fp32")
    elif not isinstance(plan, TrainPlan):
        plan = as_plan(model, plan)  # names the wrong type
    plan.check_model(model)
    check_precision_model(plan, model)
    if plan.precision != "fp32" and engine == "lean":
        raise ValueError(f"engine='lean' runs fp32 steps; plan precision {plan.precision!r} "
                         "needs engine='pytorch'")
    _check_input(model, example_input)
    return plan


def _check_input(model: nn.Module, x: object) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"example_input must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() == 0 or x.shape[0] < 1:
        raise ValueError(f"example_input needs a batch dimension, got shape {tuple(x.shape)}")
    expected = getattr(model, "input_shape", None)
    if expected is not None and tuple(x.shape[1:]) != tuple(expected):
        raise ValueError(
            f"example_input has shape {tuple(x.shape)}, but {type(model).__name__} expects "
            f"(batch, {', '.join(map(str, expected))}), e.g. "
            f"odt.models.example_input(model, batch_size={x.shape[0]})")


def _dtype_error(model: nn.Module, x: torch.Tensor, err: DtypeMismatch) -> ValueError:
    """The example input's dtype named, with what the model computes in and the fix."""
    have = sorted({str(p.dtype) for p in model.parameters() if p.is_floating_point()})
    fix = (f"Pass example_input.to({have[0]}) (odt.models.example_input(model) makes one), "
           f"or cast the model") if len(have) == 1 else "Pass the dtype the model computes in"
    return ValueError(f"the model cannot run on an example input of dtype {x.dtype} "
                      f"(parameters: {', '.join(have) or 'none'}): {err}; a real step fails "
                      f"there too. {fix}")


def _trace_of(model: nn.Module, x: torch.Tensor, precision: str = "fp32"):
    try:
        return cached_trace(model, tuple(x.shape), x.dtype, AUTOCAST.get(precision))
    except DtypeMismatch as err:
        raise _dtype_error(model, x, err) from None
    except (UnsupportedOperation, TypeError):
        raise
    except (RuntimeError, ValueError) as err:
        if "classifier" in str(err):
            raise
        raise ValueError(f"the model cannot run on an example input of shape "
                         f"{tuple(x.shape)}: {err}") from None


# ---------------------------------------------------------------- the two methods


def _recomputed(plan: TrainPlan, engine: str) -> tuple[str, ...]:
    """Blocks checkpointed in this step: the lean engine honours plan.recompute, stock does not."""
    return plan.recompute if engine == "lean" else ()


def _norm_modes(model: nn.Module, plan: TrainPlan) -> contextlib.AbstractContextManager:
    """The plan's norm statistics on a model in train mode, for the step (every module's
    own mode restored after); a model in eval mode steps as it is."""
    return plan.norm_mode(model) if model.training else contextlib.nullcontext(model)


def _checkpoint_row(block: str) -> str:
    return f"{block} (checkpoint)"


def estimate(model: nn.Module, example_input: torch.Tensor, plan: TrainPlan | str,
             optimizer: str = "sgd", engine: str = "pytorch") -> MemoryReport:
    """Analytic memory of one training step, from a shape-only trace and per-op rules.

    ``plan``: a TrainPlan or a scheme name (then ``odt.plan(model, plan)``). ``engine``:
    "pytorch" (stock autograd) or "lean" (what ``odt.lean(model, plan)`` keeps, with the
    blocks of ``plan.recompute`` checkpointed). An Int8Model (``odt.quant.to_int8``) is
    counted as a device keeps the int8 graph (see the report's bytes per element); "fp8-e4m3"
    / "fp8-e5m2" as a device with float8 storage keeps the ``fp8_autocast`` step (peak =
    the four categories); "bf16" and "fp16" as the ``torch.autocast("cpu")`` step that
    ``measure`` runs (fp16 with a ``torch.amp.GradScaler``), its peak included. A model
    in train mode steps with its norms in the plan's mode (``plan.norm_stats``), as
    ``odt.train`` and ``odt.lean`` run it. ``allocator_peak_bytes`` adds the scratch of
    kernels that allocate their own (convolutions, LSTM layers, attention), which each
    such kernel is asked once per shape by running it on zeros (cached): the first
    estimate of a large model costs about one step of those kernels.
    """
    plan = _prepare(model, example_input, plan, optimizer, engine)
    with _norm_modes(model, plan):
        return _estimate(model, example_input, plan, optimizer, engine)


def _estimate(model: nn.Module, example_input: torch.Tensor, plan: TrainPlan, optimizer: str,
              engine: str) -> MemoryReport:
    if plan.precision == "int8":
        return _int8_report(model, example_input, plan, optimizer, "estimate")
    trace = _trace_of(model, example_input, plan.precision)
    fp8 = plan.precision in FP8
    sim = play_step(trace, plan.trainable, engine, optimizer, _recomputed(plan, engine), fp8,
                    scaler=plan.precision == "fp16", channels=plan.channels,
                    activation_grad=plan.activation_grad)
    rows = tuple(
        LayerMemory(r.name, r.type, r.output_shape, r.params, r.macs, saved, trains)
        for r, saved, trains in zip(trace.layers, sim.row_saved_bytes, sim.row_trainable,
                                    strict=True))
    rows += tuple(LayerMemory(_checkpoint_row(name), "checkpoint", (), 0, 0, nbytes, False)
                  for name, nbytes in sim.checkpoint_rows)
    return MemoryReport(
        by_category=sim.by_category,
        peak_bytes=sum(sim.by_category.values()) if fp8 else sim.peak_bytes,
        frozen_weight_bytes=sim.frozen_weight_bytes,
        forward_macs=sum(r.macs for r in trace.layers), backward_macs=sim.backward_macs,
        batch_size=int(example_input.shape[0]), engine=engine, optimizer=optimizer,
        method="estimate", rows=rows, timeline=() if fp8 else sim.timeline,
        scheme=plan.scheme, precision=plan.precision,
        allocator_peak_bytes=None if fp8 else sim.allocator_peak_bytes,
        notes=((FP8_NOTE,) if fp8 else ()) + sparse_notes(plan, sim.by_category)
        + (lean_notes(rows, plan) if engine == "lean" else ()),
        peak_components=from_categories(sim.by_category) if fp8 else sim.peak_components,
        peak_at="" if fp8 else sim.peak_at)


def measure(model: nn.Module, example_input: torch.Tensor, plan: TrainPlan | str,
            optimizer: str = "sgd", engine: str = "pytorch", rss: bool = True,
            lr: float = 0.01) -> MemoryReport:
    """Memory of one real training step on a copy of ``model`` (which is left untouched).

    Forward, cross-entropy against fixed labels, backward, one optimizer step. Saved
    tensors are counted through autograd's saved-tensor hooks, the peak by tracking live
    storages op by op; ``rss`` also samples the process's resident memory (memory-profiler).
    At "bf16"/"fp16" the step runs under ``torch.autocast("cpu")`` (fp16 with a
    ``torch.amp.GradScaler("cpu")``, at a loss scale under which the step updates), as
    the estimate models it; at "fp8-e4m3"/"fp8-e5m2" under ``fp8_autocast``,
    counted in device bytes (see the estimate); an Int8Model runs its own step (forward, backward,
    optimizer step, re-rounding) counted as a device keeps the int8 graph. A model in
    train mode steps with its norms in the plan's mode (``plan.norm_stats``).
    """
    plan = _prepare(model, example_input, plan, optimizer, engine)
    with _norm_modes(model, plan):
        return _measure(model, example_input, plan, optimizer, engine, rss, lr)


def _measure(model: nn.Module, example_input: torch.Tensor, plan: TrainPlan, optimizer: str,
             engine: str, rss: bool, lr: float) -> MemoryReport:
    if plan.precision == "int8":
        return _int8_report(model, example_input, plan, optimizer, "measure", lr)
    try:  # the dtype error of the estimate, before a real step fails less clearly
        cached_trace(model, tuple(example_input.shape), example_input.dtype,
                     AUTOCAST.get(plan.precision))
    except DtypeMismatch as err:
        raise _dtype_error(model, example_input, err) from None
    except (UnsupportedOperation, RuntimeError, ValueError, TypeError):
        pass  # measure runs models the estimate cannot trace
    if engine == "lean":
        from ..engine import lean

        work = lean(model, plan)
    else:
        work = plan.apply_(copy.deepcopy(model))
    x = example_input.detach().clone()  # its own bytes, not a whole dataset it slices
    args = (work, x, optimizer, lr, _recomputed(plan, engine), step_setup(plan.precision, work),
            masks_for(work, plan))  # the optimizer masks frozen channels as odt.train's does
    rss_peak = None
    if rss:
        from memory_profiler import memory_usage

        peak_mib, record = memory_usage((run_step, args, {}), max_usage=True, retval=True,
                                        interval=0.005)
        rss_peak = int(float(peak_mib) * 2**20)
    else:
        record = run_step(*args)
    rows = _measured_rows(model, x, plan, record)
    fp8 = plan.precision in FP8  # device bytes: the simulation's float32 timeline is not
    return MemoryReport(
        by_category=record.by_category,
        peak_bytes=sum(record.by_category.values()) if fp8 else record.peak_bytes,
        frozen_weight_bytes=record.frozen_weight_bytes,
        forward_macs=sum(r.macs for r in rows), backward_macs=record.backward_macs,
        batch_size=int(x.shape[0]), engine=engine, optimizer=optimizer, method="measure",
        rows=rows, timeline=() if fp8 else record.timeline, scheme=plan.scheme,
        precision=plan.precision, rss_peak_bytes=rss_peak,
        allocator_peak_bytes=None if fp8 else record.allocator_peak_bytes,
        notes=((FP8_NOTE,) if fp8 else ()) + sparse_notes(plan, record.by_category)
        + (lean_notes(rows, plan) if engine == "lean" else ()))


def _int8_report(model: nn.Module, x: torch.Tensor, plan: TrainPlan, optimizer: str,
                 method: str, lr: float = 0.01) -> MemoryReport:
    """The int8 graph's report: by rules from its operators (estimate), or from one real
    step of it (measure: forward, backward, optimizer step, re-rounding)."""
    x = x.detach()
    est = int8_step(model, x, plan.trainable, state_copies(optimizer), optimizer == "adam")
    by_category, frozen = est.by_category, est.frozen_weight_bytes
    saved = {op.path: n for op, n in est.rows}
    if method == "measure":
        work = plan.apply_(copy.deepcopy(model))
        record = run_step(work, x, optimizer, lr, (), step_setup("int8", work))
        by_category, frozen = record.by_category, record.frozen_weight_bytes
        saved = dict(record.saved_by_row)
    params = dict(model.named_parameters())
    rows = tuple(LayerMemory(
        op.path, op.kind, op.out_shape,
        sum(params[n].numel() for n in (op.weight, op.bias) if n), op.macs,
        saved.pop(op.path, 0), any(n in plan.trainable for n in (op.weight, op.bias) if n))
        for op, _ in est.rows)
    rows += tuple(LayerMemory(name, "?", (), 0, 0, n, False) for name, n in saved.items() if n)
    return MemoryReport(
        by_category=by_category, peak_bytes=sum(by_category.values()),
        frozen_weight_bytes=frozen, forward_macs=est.forward_macs,
        backward_macs=est.backward_macs, batch_size=int(x.shape[0]), engine="pytorch",
        optimizer=optimizer, method=method, rows=rows, scheme=plan.scheme, precision="int8",
        notes=(INT8_NOTE,),
        peak_components=from_categories(by_category) if method == "estimate" else {})


def _measured_rows(model: nn.Module, x: torch.Tensor, plan: TrainPlan, record) -> tuple:
    """Rows named as the estimate names them (from the stock model's trace when it can be
    traced), with the bytes the measurement saw kept per layer."""
    try:
        layers = cached_trace(model, tuple(x.shape), x.dtype, AUTOCAST.get(plan.precision)).layers
    except (UnsupportedOperation, RuntimeError, ValueError, TypeError):
        layers = record.rows
    saved = dict(record.saved_by_row)
    rows = [LayerMemory(r.name, r.type, r.output_shape, r.params, r.macs, saved.pop(r.name, 0),
                        any(n in plan.trainable for n in r.param_names)) for r in layers]
    rows += [LayerMemory(name, "checkpoint" if name.endswith("(checkpoint)") else "?", (), 0, 0,
                         nbytes, False) for name, nbytes in saved.items()]
    return tuple(rows)


def __getattr__(name: str):
    if name == "check_conv_saved_bytes":  # the library never imports the lab book
        raise AttributeError("odtkit.memory.check_conv_saved_bytes moved to the lab book: use "
                             "odt.lab.check_conv_saved_bytes")
    raise AttributeError(f"module 'odtkit.memory' has no attribute {name!r}")
