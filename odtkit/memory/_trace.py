"""Trace one forward pass and the loss on the meta device: every aten op, with shapes.

No arithmetic runs: each op is replayed on shape-only "meta" twins of its tensors, so the
parameters and buffers of the model are never read or written. The model's code holds
CPU-device shells of those twins (``_shell``), so ``torch.autocast("cpu")`` around the
trace makes the casts it makes in a real step, and the trace records them. The trace records which
storage every tensor lives in (views share one), which op made it, when the model's own
code lets go of it, and which module was running. It does not depend on the plan, so it
is cached per model structure and input shape.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.weak import WeakIdKeyDictionary

from ._fused import fusable_spans
from ._layers import LayerCall, layer_rows, watch
from ._shapes import RESTRIDE, DtypeMismatch, fast_output, mixed_dtypes
from ._shell import Shell, TopLevelCalls, autocast_region, restride, unwrap, wrap_outputs

META = torch.device("meta")


class UnsupportedOperation(NotImplementedError):
    """The memory model has no rule for an operation the model uses."""


@dataclass(frozen=True)
class Op:
    """One aten op: its name, the value ids of its tensor arguments, and its outputs.

    ``ins`` has one entry per positional argument: a value id, a tuple of value ids (a
    list argument), or None (not a tensor). ``new`` lists the storages the op allocated.
    """

    name: str  # aten packet name, e.g. "convolution"
    ins: tuple
    outs: tuple[int, ...]
    new: tuple[int, ...]
    args: tuple  # the positional arguments with tensors replaced by None (for scalars)
    module: str  # innermost module running ("" for the model itself)
    leaf_type: type | None  # type of the innermost module
    phase: str  # "forward" or "loss"
    kw_ins: tuple[tuple[str, int], ...] = ()  # (name, value id) of tensor keyword arguments


@dataclass(frozen=True)
class Trace:
    """Everything the memory model needs to know about one forward pass plus loss."""

    ops: tuple[Op, ...]
    value_storage: tuple[int, ...]  # value id -> storage id
    value_bytes: tuple[int, ...]  # value id -> numel * itemsize
    value_float: tuple[bool, ...]  # value id -> floating point (can carry a gradient)
    value_dtype: tuple[torch.dtype, ...]
    value_shape: tuple[tuple[int, ...], ...]
    storage_bytes: tuple[int, ...]
    storage_kind: tuple[str, ...]  # "param", "buffer", "input", "act"
    param_value: dict[str, int]  # parameter name -> value id
    param_names: tuple[str, ...]  # the model's parameters in its order (an optimizer's)
    layers: tuple[LayerCall, ...]
    spans: tuple[tuple[str, int, int, tuple[int, ...]], ...]  # module, ops [first, end), inputs
    op_layer: tuple[int, ...]  # op index -> row in layers (-1: the loss)
    dies_after: tuple[tuple[int, ...], ...]  # op index -> act storages freed right after it
    held: frozenset[int]  # storages alive when the loss is known: input, logits, labels, loss
    written_buffers: frozenset[int]  # buffer storages the step updates (BN running stats)
    logits_value: int
    loss_value: int
    n_forward: int  # ops[:n_forward] are the model's forward, the rest the loss
    # ops that end a top-level op (where a measured step reads its live bytes), and the
    # storages freed inside a top-level op (gone when it ends; see _shell)
    op_ends: frozenset[int]
    freed_within: frozenset[int]
    autocast: torch.dtype | None  # forward and loss ran under torch.autocast("cpu", this)
    value_stride: tuple[tuple[int, ...], ...] = ()  # value id -> strides (kernel scratch probes)
    fused_spans: tuple[tuple[int, int], ...] = ()  # module calls PyTorch may fuse (_fused)


_TAKES_DEVICE: dict[object, bool] = {}


def _takes_device(func: object) -> bool:
    """True for factory ops (a ``device`` keyword): they must allocate on meta too."""
    hit = _TAKES_DEVICE.get(func)
    if hit is None:
        hit = _TAKES_DEVICE[func] = any(a.name == "device" for a in func._schema.arguments)
    return hit


class _Tracer(TorchDispatchMode):
    """Replays every aten op on meta twins and records it, with when each storage dies.

    The model's own Python code runs unchanged on meta tensors, so its references (locals,
    arguments of module calls still running) keep meta storages alive exactly as they keep
    real ones alive: a storage found expired before op i died after op i - 1.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.known = {id(p): ("param", n, p) for n, p in model.named_parameters()}
        self.known.update({id(b): ("buffer", n, b) for n, b in model.named_buffers()})
        self.value_of = WeakIdKeyDictionary()  # tensor object -> value id
        self.twins = WeakIdKeyDictionary()  # real tensor -> its meta twin
        self.storage_of: dict[int, int] = {}  # _cdata of a live storage -> storage id
        self.alive: dict[int, tuple[StorageWeakRef, int]] = {}  # storage id -> (ref, _cdata)
        self.died_after: dict[int, int] = {}  # storage id -> op index after which it died
        self.v_storage: list[int] = []
        self.v_bytes: list[int] = []
        self.v_float: list[bool] = []
        self.v_dtype: list[torch.dtype] = []
        self.v_shape: list[tuple[int, ...]] = []
        self.v_stride: list[tuple[int, ...]] = []
        self.s_bytes: list[int] = []
        self.s_kind: list[str] = []
        self.param_value: dict[str, int] = {}
        self.ops: list[Op] = []
        self.stack: list[tuple[str, type, int]] = [("", type(model), 0)]
        self.phase = "forward"
        self.in_call = False  # inside a torch call of the model's code (TopLevelCalls)
        self.op_ends: set[int] = set()
        self.freed_within: set[int] = set()
        for kind, _, t in self.known.values():  # weights count even if no op reads them
            self._storage(t, kind)

    # --------------------------------------------------------------- values
    def _storage(self, t: torch.Tensor, kind: str) -> int:
        storage = t.untyped_storage()
        sid = self.storage_of.get(storage._cdata)
        if sid is None:
            sid = len(self.s_bytes)
            self.storage_of[storage._cdata] = sid
            self.s_bytes.append(storage.nbytes())
            self.s_kind.append(kind)
            if kind not in ("param", "buffer"):
                self.alive[sid] = (StorageWeakRef(storage), storage._cdata)
        return sid

    def sweep(self) -> None:
        """Note the storages freed since the last op."""
        dead = [sid for sid, (ref, _) in self.alive.items() if ref.expired()]
        for sid in dead:
            cdata = self.alive.pop(sid)[1]
            self.storage_of.pop(cdata, None)
            self.died_after[sid] = len(self.ops) - 1

    def end_call(self, first_op: int) -> None:
        """A top-level op ended after ``ops[first_op:]``: what it freed inside itself."""
        self.op_ends.add(len(self.ops) - 1)
        before = set(self.alive)
        self.sweep()
        self.freed_within.update(before.difference(self.alive))

    def new_value(self, t: torch.Tensor, kind: str) -> int:
        vid = len(self.v_storage)
        self.v_storage.append(self._storage(t, kind))
        self.v_bytes.append(t.numel() * t.element_size())
        self.v_float.append(t.is_floating_point() or t.is_complex())
        self.v_dtype.append(t.dtype)
        self.v_shape.append(tuple(t.shape))
        self.v_stride.append(tuple(t.stride()))
        self.value_of[t] = vid
        return vid

    def vid(self, t: torch.Tensor) -> int | None:
        """The value id of a tensor the model's code holds (a shell, a meta tensor)."""
        return self.value_of.get(unwrap(t))

    def _meta(self, t: torch.Tensor) -> tuple[torch.Tensor, int]:
        """(meta twin, value id) of a tensor argument, registering it on first sight."""
        t = unwrap(t)
        if t.device.type == "meta":
            vid = self.value_of.get(t)
            return t, (self.new_value(t, "act") if vid is None else vid)
        twin = self.twins.get(t)
        if twin is None:
            kind, name, _ = self.known.get(id(t), ("act", None, None))
            twin = torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device=META)
            self.twins[t] = twin
            # the real storage names the memory (tied weights share it); the twin maps there
            sid = self._storage(t, kind)
            self.storage_of[twin.untyped_storage()._cdata] = sid
            vid = self.new_value(twin, kind)
            if kind == "param":
                self.param_value[name] = vid
        return twin, self.value_of[twin]

    def _convert(self, a: object) -> tuple[object, object]:
        if isinstance(a, torch.Tensor):
            return self._meta(a)
        if isinstance(a, (list, tuple)) and any(isinstance(x, torch.Tensor) for x in a):
            pairs = [self._convert(x) for x in a]
            return type(a)(p[0] for p in pairs), tuple(p[1] for p in pairs)
        return a, None

    # --------------------------------------------------------------- dispatch
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.sweep()
        kwargs = dict(kwargs or {})
        pairs = [self._convert(a) for a in args]
        margs = tuple(p[0] for p in pairs)
        name = func._overloadpacket.__name__
        mixed = mixed_dtypes(name, margs)
        if mixed:
            module, leaf, _ = self.stack[-1]
            raise DtypeMismatch(f"{where(module, leaf)} runs aten.{name} on tensors of dtypes "
                                f"{', '.join(mixed)}, which PyTorch refuses to mix")
        kw_ins = []
        for key, val in kwargs.items():
            if isinstance(val, torch.Tensor):
                kwargs[key], vid = self._meta(val)
                kw_ins.append((key, vid))
            elif key == "device":
                kwargs[key] = META
        if "device" not in kwargs and _takes_device(func):
            kwargs["device"] = META
        try:
            out = fast_output(name, margs, kwargs)
            if out is None:
                out = func(*margs, **kwargs)
        except (RuntimeError, NotImplementedError) as err:
            if "meta" in str(err).lower():  # data-dependent: needs values a trace lacks
                raise self.unsupported(func, f"it needs tensor values ({err})") from None
            raise
        n_storages = len(self.s_bytes)
        flat = out if isinstance(out, (tuple, list)) else (out,)
        outs = tuple(self.new_value(o, "act") for o in flat if isinstance(o, torch.Tensor))
        module, leaf, _ = self.stack[-1]
        scalars = tuple(None if p[1] is not None else a for a, p in zip(args, pairs, strict=True))
        self.ops.append(Op(name, tuple(p[1] for p in pairs), outs,
                           tuple(range(n_storages, len(self.s_bytes))), scalars, module, leaf,
                           self.phase, tuple(kw_ins)))
        if not self.in_call:  # an op no torch call of the model's code made: its own end
            self.op_ends.add(len(self.ops) - 1)
        if name in RESTRIDE:
            restride(args[0], margs[0])
        return wrap_outputs(out, margs, args)

    def unsupported(self, func: object, why: str) -> UnsupportedOperation:
        module, leaf, _ = self.stack[-1]
        what = f"{func} / " if func else ""
        return UnsupportedOperation(f"odtkit.estimate does not model {what}"
                                    f"{where(module, leaf)}: {why}")


def check_logits(logits: object, input_shape: tuple[int, ...], who: str) -> None:
    """Raise ValueError unless ``logits`` is a (batch, classes) tensor for cross-entropy."""
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"{who} needs a classifier: the model must return logits of shape "
                         f"(batch, classes) for cross-entropy, got {got} for input "
                         f"{tuple(input_shape)}")


def where(module: str, leaf: type) -> str:
    """'torch.nn.modules.rnn.LSTM (in module 'rnn')' or 'the forward of Net'."""
    if module:
        return f"{leaf.__module__}.{leaf.__qualname__} (in module {module!r})"
    return f"the forward of {leaf.__qualname__}"


def trace(model: nn.Module, shape: tuple[int, ...], dtype: torch.dtype,
          autocast: torch.dtype | None = None) -> Trace:
    """Trace ``model`` on a meta input of ``shape``/``dtype``, then cross-entropy on its
    logits; ``autocast``: both under ``torch.autocast("cpu", autocast)``, as a real step."""
    tracer = _Tracer(model)
    calls: list = []
    spans: list = []
    x = torch.empty(shape, dtype=dtype, device=META)
    tracer.new_value(x, "input")
    x = Shell(x)
    try:
        with (watch(model, tracer, calls, spans), tracer, TopLevelCalls(tracer),
              torch.no_grad(), autocast_region(autocast)):
            logits = model(x)
            check_logits(logits, shape, "the memory model")
            n_forward = len(tracer.ops)
            tracer.phase = "loss"
            labels = torch.arange(logits.shape[0]) % logits.shape[1]
            loss = F.cross_entropy(logits, labels)
            tracer.sweep()
    except (RuntimeError, NotImplementedError, TypeError) as err:
        if "meta" not in str(err).lower() or isinstance(err, UnsupportedOperation):
            raise
        # a module that checks devices or reads values in Python before any aten op
        raise tracer.unsupported("", f"it cannot run without data ({err})") from None
    ops, vs, kinds = tracer.ops, tracer.v_storage, tracer.s_kind
    dies: list[list[int]] = [[] for _ in ops]
    for sid, i in tracer.died_after.items():
        if kinds[sid] == "act" and i >= 0:
            dies[i].append(sid)
    written = set()
    for op in ops:
        if op.name.endswith("_") and isinstance(op.ins[0], int):
            written.add(vs[op.ins[0]])
        if op.name == "native_batch_norm" and op.args[5]:
            written.update(vs[v] for v in op.ins[3:5] if v is not None)
    # what the caller still holds at the end (input, logits, labels, loss, anything cached)
    held = frozenset(tracer.alive)
    rows, op_layer = layer_rows(ops, calls, tracer.v_shape)
    return Trace(
        tuple(ops), tuple(vs), tuple(tracer.v_bytes), tuple(tracer.v_float), tuple(tracer.v_dtype),
        tuple(tracer.v_shape), tuple(tracer.s_bytes), tuple(kinds), tracer.param_value,
        tuple(n for n, _ in model.named_parameters()),
        rows, tuple(spans), op_layer, tuple(map(tuple, dies)), held,
        frozenset(s for s in written if kinds[s] == "buffer"), tracer.vid(logits),
        tracer.vid(loss), n_forward, frozenset(tracer.op_ends),
        frozenset(tracer.freed_within), autocast, tuple(tracer.v_stride),
        fusable_spans(model, spans, tracer.v_shape, autocast))


_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _signature(model: nn.Module) -> tuple:
    """What a trace depends on besides the input: module types and modes, tensor shapes."""
    mods = tuple((type(m), m.training) for m in model.modules())
    tensors = tuple((id(t), t.shape, t.dtype) for t in model.parameters())
    tensors += tuple((id(t), t.shape, t.dtype) for t in model.buffers())
    return mods, tensors


def cached_trace(model: nn.Module, shape: tuple[int, ...], dtype: torch.dtype,
                 autocast: torch.dtype | None = None) -> Trace:
    """``trace`` memoized per model object, structure, modes, input shape and autocast."""
    key = (_signature(model), shape, dtype, autocast)
    per_model = _CACHE.setdefault(model, {})
    hit = per_model.get(key)
    if hit is None:
        hit = per_model[key] = trace(model, shape, dtype, autocast)
        if len(per_model) > 32:  # many shapes of one model (a widget sweep): drop the oldest
            del per_model[next(iter(per_model))]
    return hit
