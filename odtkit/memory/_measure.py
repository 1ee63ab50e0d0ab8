"""One real training step, accounted tensor by tensor (the ground truth for the estimate).

Saved-for-backward tensors come from autograd's own saved-tensor hooks (distinct storages,
parameters and buffers excluded). Live bytes come from the allocator: PyTorch's profiler
reports every allocation and free, and the running total is read at the end of each
top-level aten op, so what an op allocates and frees inside itself (kernel scratch space)
is left out: what remains is the memory of the tensors, as the estimate counts it. The
profiler wraps nothing in Python, so autograd behaves exactly as in an unobserved step
(a Python dispatch mode would, for one, make it sum fan-in gradients out of place).
"""

from __future__ import annotations

import bisect
import contextlib
import gc
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.multiprocessing.reductions import StorageWeakRef
from torch.profiler import ProfilerActivity, profile, record_function
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from ..models.summary import backward_macs, is_layer
from ..training.optim import make_optimizer
from ._hooks import global_calls, quiet_stderr
from ._layers import LayerCall, first_tensor, layer_row
from ._setup import StepSetup, labels_for, loss_scale_that_steps, storage_key
from ._trace import check_logits

_PHASE = "odtkit::"  # prefix of the profiler ranges that mark the phases of the step


def unique_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of the distinct storages behind ``tensors`` (views counted once)."""
    seen: dict[int, int] = {}
    for t in tensors:
        storage = t.untyped_storage()
        seen[storage._cdata] = storage.nbytes()
    return sum(seen.values())


class _OpWatch(TorchDispatchMode):
    """During forward only: the last aten op and its output shape (to name the rows of
    functional ops), how many ops ran (to spot a checkpoint saving a block's inputs), and
    the storages that are cast copies of a parameter or buffer (``weight_copies``: what
    autocast or an integer graph's dtype change makes of a weight), and the storages of
    parameters and buffers an op writes (``written``: BN running statistics, which an
    update can leave equal to what they were)."""

    def __init__(self, frozen_keys: set[int] | frozenset[int] = frozenset()) -> None:
        super().__init__()
        self.n_ops = 0
        self.last_op = ""
        self.last_shape: tuple[int, ...] = ()
        self.frozen_keys = frozen_keys
        self.weight_copies: dict[int, StorageWeakRef] = {}
        self.fp8_copies: dict[int, StorageWeakRef] | None = None  # set to watch fp8 casts
        self.written: set[int] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if self.fp8_copies is not None:  # views of a cast copy (a linear's weight.t())
            for a in tree_leaves(args):
                if isinstance(a, torch.Tensor):
                    self.note_fp8(a)
        out = func(*args, **(kwargs or {}))
        self.n_ops += 1
        self.last_op = func._overloadpacket.__name__
        self._note_writes(func, args)
        if (self.last_op == "_to_copy" and isinstance(out, torch.Tensor)
                and storage_key(args[0]) in self.frozen_keys):
            self.weight_copies[storage_key(out)] = StorageWeakRef(out.untyped_storage())
        leaves = tree_leaves(out)
        if leaves and isinstance(leaves[0], torch.Tensor):
            self.last_shape = tuple(leaves[0].shape)
        return out

    def _note_writes(self, func, args: tuple) -> None:
        # native_batch_norm updates its running statistics (arguments 3, 4) in training
        # (argument 5) though its schema does not mark them written
        bn = self.last_op == "native_batch_norm" and len(args) > 5 and args[5]
        for k, (a, arg) in enumerate(zip(func._schema.arguments, args, strict=False)):
            write = a.alias_info is not None and a.alias_info.is_write
            if isinstance(arg, torch.Tensor) and (write or (bn and k in (3, 4))):
                key = storage_key(arg)
                if key in self.frozen_keys:
                    self.written.add(key)

    def is_weight_copy(self, t: torch.Tensor) -> bool:
        """True if ``t`` lives in a live cast copy of a parameter or buffer."""
        ref = self.weight_copies.get(storage_key(t))
        return ref is not None and not ref.expired()

    def note_fp8(self, t: torch.Tensor) -> None:
        """Remember the storage of ``t`` if it is a copy made by ``fp8_autocast``'s cast."""
        from ..quant.precision import is_fp8_cast

        if self.fp8_copies is not None and is_fp8_cast(t):
            self.fp8_copies[storage_key(t)] = StorageWeakRef(t.untyped_storage())

    def is_fp8_copy(self, t: torch.Tensor) -> bool:
        """True if ``t`` lives in a live copy made by ``fp8_autocast``'s cast. Autograd
        saves an op's inputs before the op reaches this mode: ``t`` itself is checked too."""
        self.note_fp8(t)
        ref = None if self.fp8_copies is None else self.fp8_copies.get(storage_key(t))
        return ref is not None and not ref.expired()


def _live_timeline(prof: profile, start_bytes: int) -> tuple[list[tuple[str, int]], int]:
    """("phase: op", live bytes) at the end of every top-level aten op, and at phase ends;
    and the allocator's peak within the phases (every allocation counted, a kernel's
    scratch included)."""
    memory, phases, ops = [], [], []
    for e in prof.profiler.kineto_results.events():
        name = e.name()
        if name == "[memory]":
            memory.append((e.start_ns(), e.nbytes()))
        elif name.startswith("aten::"):
            ops.append((e.start_ns(), -e.end_ns(), e.start_thread_id(), name[6:]))
        elif name.startswith(_PHASE):
            phases.append((e.start_ns(), e.end_ns(), name[len(_PHASE):]))
    memory.sort()
    phases.sort()
    ops.sort()
    times = [t for t, _ in memory]
    totals, running = [], start_bytes
    for _, nbytes in memory:
        running += nbytes
        totals.append(running)

    def live_at(t_ns: int) -> int:
        k = bisect.bisect_right(times, t_ns) - 1
        return totals[k] if k >= 0 else start_bytes

    points: list[tuple[int, str]] = []
    outer: dict[int, tuple[int, int]] = {}  # thread -> the top-level op open there
    for start, neg_end, thread, name in ops:  # by start, the outer of two first
        end = -neg_end
        top = outer.get(thread)
        if top is not None and start >= top[0] and end <= top[1]:
            continue  # runs inside another op: its scratch space is not a tensor of ours
        outer[thread] = (start, end)
        points.append((end, name))
    points += [(end, "done") for _, end, _ in phases]
    timeline = []
    for end, name in sorted(points):
        phase = next((p for s, e, p in phases if s <= end <= e), "")
        if phase:
            timeline.append((f"{phase}: {name}", live_at(end)))
    first, last = (phases[0][0], max(e for _, e, _ in phases)) if phases else (0, 0)
    inside = [b for t, b in zip(times, totals, strict=True) if first <= t <= last]
    return timeline, max([start_bytes, *inside])


@dataclass(frozen=True)
class StepBytes:
    """The numbers of one training step that the estimate and the measurement share."""

    weights_bytes: int
    gradients_bytes: int
    optimizer_bytes: int
    activations_bytes: int
    peak_bytes: int
    frozen_weight_bytes: int
    backward_macs: int

    @property
    def by_category(self) -> dict[str, int]:
        """The four categories of a MemoryReport, in its order."""
        return {"weights": self.weights_bytes, "gradients": self.gradients_bytes,
                "optimizer": self.optimizer_bytes, "activations": self.activations_bytes}


@dataclass(frozen=True)
class StepRecord(StepBytes):
    """What one measured training step held, in bytes, and the layers it ran."""

    rows: tuple[LayerCall, ...]
    saved_by_row: dict[str, int]
    timeline: tuple[tuple[str, int], ...]
    allocator_peak_bytes: int  # the allocator's peak, kernel scratch included


class _Layers:
    """Through global module hooks on every module: the running module stack, a row per layer
    call, and the backward MACs of each (``backward_macs``)."""

    def __init__(self, model: torch.nn.Module, watch: _OpWatch,
                 checkpointed: frozenset[str]) -> None:
        self.checkpointed = checkpointed
        self.stack: list[tuple[str, bool, int]] = []
        self.calls: list[tuple[int, LayerCall]] = []
        self.backward_macs = 0
        self.forward = True  # False once backward starts (a checkpoint reruns forwards)
        self.counted: set[int] = set()
        self.own = {name: tuple(f"{name}.{n}" for n, _ in module.named_parameters(recurse=False))
                    for name, module in model.named_modules()}
        self.watch = watch
        self.hooks = contextlib.ExitStack()
        self.hooks.enter_context(global_calls(model, self.enter, self.leave))

    def enter(self, name: str, module: torch.nn.Module) -> None:
        self.stack.append((name, name != "" and is_layer(module), self.watch.n_ops))

    def leave(self, name: str, mod: torch.nn.Module, inputs: tuple, output: object) -> None:
        _, layer, first_op = self.stack.pop()
        if not layer or not self.forward:
            return
        row = layer_row(name, mod, inputs, output, self.own[name], self.counted, None)
        self.calls.append((first_op, row))
        x = first_tensor(inputs)
        weight = getattr(mod, "weight", None)
        self.backward_macs += backward_macs(
            row.macs, input_grad=x is not None and x.requires_grad,
            weight_grad=isinstance(weight, torch.Tensor) and weight.requires_grad)

    def owner(self, watch: _OpWatch) -> str:
        """Row name for a tensor saved now: the layer, or 'module.op' outside layers."""
        name, layer, first_op = self.stack[-1] if self.stack else ("", False, 0)
        if name in self.checkpointed and watch.n_ops == first_op:
            return f"{name} (checkpoint)"  # the checkpoint saving the block's inputs
        if layer:
            return name
        row = f"{name}.{watch.last_op}" if name else watch.last_op
        if not any(r.name == row for _, r in self.calls):
            self.calls.append((watch.n_ops, LayerCall(row, watch.last_op, watch.last_shape,
                                                      0, 0, (), None)))
        return row

    def remove(self) -> None:
        self.hooks.close()


def _train(model: torch.nn.Module, x: torch.Tensor, opt: torch.optim.Optimizer | None,
           setup: StepSetup, watch: _OpWatch, layers: _Layers, pack: Callable,
           init_scale: float = 65536.0) -> object:
    """Forward (and loss) under the setup's autocast, backward, step; returns the scaler."""
    if setup.autocast is not None:
        cast = torch.autocast("cpu", dtype=setup.autocast)
    elif setup.fp8 is not None:
        from ..quant.precision import fp8_autocast

        cast = fp8_autocast(setup.fp8)
    else:
        cast = contextlib.nullcontext()
    scaler = (torch.amp.GradScaler("cpu", init_scale=init_scale)
              if setup.grad_scaler and opt is not None else None)
    with cast:
        with record_function(_PHASE + "forward"), watch:
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                logits = model(x)
        layers.forward = False
        check_logits(logits, x.shape, "measure")
        with record_function(_PHASE + "loss"):
            labels = labels_for(logits)  # alive to the end of the step, as the estimate has it
            loss = F.cross_entropy(logits, labels)
            del logits
    if opt is not None:
        with record_function(_PHASE + "backward"):
            (loss if scaler is None else scaler.scale(loss)).backward()
            del loss
        with record_function(_PHASE + "step"):
            if scaler is None:
                opt.step()
            else:
                scaler.step(opt)
                scaler.update()
            if setup.after_step is not None:
                setup.after_step(model)
    return scaler


def run_step(
    model: torch.nn.Module, x: torch.Tensor, optimizer: str, lr: float = 0.01,
    checkpointed: tuple[str, ...] = (), setup: StepSetup | None = None,
    masks: dict | None = None,
) -> StepRecord:
    """Forward, cross-entropy, backward and one optimizer step on ``model`` (changed in place).

    A model with nothing to train runs forward and loss only (what inference would hold).
    ``checkpointed``: names of modules run under a checkpoint. The checkpoint saves their
    inputs through the saved-tensor hooks (row "<module> (checkpoint)") and hides the rest.
    ``setup``: autocast, loss scaling, what runs after the step and how bytes count.
    ``masks``: the optimizer's channel masks (``make_optimizer``), for a channel-sparse plan.
    """
    setup = setup or StepSetup()
    params = list(model.parameters())
    buffers = list(model.buffers())
    before = [b.clone() for b in buffers]  # which buffers the step writes (BN statistics)
    frozen_keys = {storage_key(t) for t in params + buffers}
    trains = any(p.requires_grad for p in params)
    opt = make_optimizer(optimizer, params, lr=lr, masks=masks) if trains else None
    init_scale = 65536.0
    if setup.grad_scaler and opt is not None:  # before hooks and profiling: runs on a copy
        init_scale = loss_scale_that_steps(model, x, setup.autocast or torch.float16)
    saved: dict[int, StorageWeakRef] = {}  # storages seen by the saved-tensor hooks
    saved_by_row: dict[str, int] = {}
    watch = _OpWatch(frozen_keys)
    layers = _Layers(model, watch, frozenset(checkpointed))
    fp8_grads: dict[int, bool] = {}  # parameter id -> every gradient arrived through a cast
    grad_hooks = []
    if setup.fp8 is not None:
        from ..quant.precision import is_fp8_cast

        watch.fp8_copies = {}

        def arrived(p: torch.Tensor, g: torch.Tensor) -> None:
            fp8_grads[id(p)] = fp8_grads.get(id(p), True) and is_fp8_cast(g)

        grad_hooks = [p.register_hook(lambda g, p=p: arrived(p, g))
                      for p in params if p.requires_grad]

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        key = storage._cdata
        old = saved.get(key)
        # a storage saved and already freed (a checkpoint that made no graph) may lend its
        # address to a new one: that is another saved storage
        if key not in frozen_keys and (old is None or old.expired()):
            saved[key] = StorageWeakRef(storage)
            row = layers.owner(watch)
            kind = ("fp8" if watch.is_fp8_copy(t) else
                    "weight-copy" if watch.is_weight_copy(t) else "saved")
            saved_by_row[row] = saved_by_row.get(row, 0) + setup.nbytes(kind, t)
        return t

    start_bytes = unique_bytes([*params, *buffers, x])
    prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
    # no garbage collection inside the step: freeing an earlier step's cyclic garbage
    # (a lean model is one) would count against this step
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        with quiet_stderr():
            prof.__enter__()
        scaler = _train(model, x, opt, setup, watch, layers, pack, init_scale)
    finally:
        layers.remove()
        for h in grad_hooks:
            h.remove()
        with quiet_stderr():
            prof.__exit__(None, None, None)
        if gc_was_enabled:
            gc.enable()
    timeline, allocator_peak = _live_timeline(prof, start_bytes)
    state = [] if opt is None else [
        t for s in opt.state.values() for t in s.values() if isinstance(t, torch.Tensor)]
    if scaler is not None:  # the loss scale and its growth tracker persist between steps
        state += [scaler._scale, scaler._growth_tracker]
    frozen = [p for p in params if not p.requires_grad]
    frozen_buffers = [b for b, old in zip(buffers, before, strict=True)
                      if storage_key(b) not in watch.written and torch.equal(b, old)]
    return StepRecord(
        weights_bytes=setup.total("param", params) + setup.total("buffer", buffers),
        gradients_bytes=(
            setup.total("grad", (p.grad for p in params
                                 if p.grad is not None and not fp8_grads.get(id(p))))
            + setup.total("fp8-grad", (p.grad for p in params
                                       if p.grad is not None and fp8_grads.get(id(p))))),
        optimizer_bytes=setup.total("state", state),
        activations_bytes=sum(saved_by_row.values()),
        peak_bytes=max([start_bytes, *(b for _, b in timeline)]),
        allocator_peak_bytes=allocator_peak,
        frozen_weight_bytes=setup.total("param", frozen) + setup.total("buffer", frozen_buffers),
        backward_macs=layers.backward_macs,
        rows=tuple(r for _, r in sorted(layers.calls, key=lambda c: c[0])),
        saved_by_row=saved_by_row,
        timeline=tuple(timeline),
    )
