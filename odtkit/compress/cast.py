"""Dense baselines: send the tensor as is (one copy), or cast it to a 16-bit float.

What passes and what is refused. The three are transparent, as PyTorch's allreduce,
fp16 and bf16 communication hooks are: NaN and +-inf entries of the input travel as
they are (``none`` sends them, a cast maps them to NaN and +-inf of its dtype), and no
pass looks for them. What is refused is a cast that turns a *finite* entry into inf,
since the receiver would get a value nobody sent: float16 above 65504 (|x| >= 65520
rounds to inf), bfloat16 within half a step of the float32 maximum (|x| >= 3.3961e38),
anything beyond the target's range from a float64 input, and a float16 input whose
bfloat16 value, cast back to float16 on decoding, passes 65504. The ValueError names the
tensor, the largest |value| that overflowed and the fix ('bf16', 'none' or scaling down).

Cost. In bare PyTorch a round trip is one copy, or one cast and one cast back, so every
extra pass and every per-call Python step shows. ``none`` makes no pass beyond its copy
(with odtkit's compiled ops, ``flat_copy``: one call, one memcpy).
A cast makes none either where odtkit's compiled ops are built (``odtkit native``;
``odtkit.engine.native``): ``cast_checked`` (``csrc/dense_ops.cpp``) writes the payload and
notes in the same pass whether any entry came out inf or NaN, and ``uncast`` widens it back
into the caller's shape. Without them (no compiler, ``ODTKIT_NATIVE=0``; or an input they
leave to torch: strided, not on the CPU, needing grad, not float32) the cast is torch's
and the check is one more pass: the sum of the 16-bit payload, read right after the cast
wrote it (half the input's bytes), finite unless an entry is inf or NaN (or a 16-bit sum
of finite entries overflowed). Either way, only when
the check fires does ``_settle`` compare payload and input entry by entry. An inf in the
payload where the input is finite is an overflow, refused; everything else was in the
input and passes. The check is exact (every entry counts, no sampling) and an input with
inf or NaN costs that second look on every call. The decoded tensor and the all-reduced
buffer cannot carry the check instead: there an inf from the input and an overflowed one
look the same, and only ``compress`` holds the input.

Paths. With the compiled ops, a plain contiguous CPU tensor (float32 for a cast) that
needs no grad takes one call that checks it and makes the payload (``flat_copy``,
``cast_checked``; they answer None for anything else), then the step and the context.
Otherwise ``_compress_torch``: a plain tensor of a dtype the codec takes that needs no
grad (and, for ``none``, is contiguous) takes a short path (checks that read no data, the
payload, the step and the context); any other goes through ``_compress_any``, with the
same payload and checks.

Why ``none`` copies: its payload is what was sent, and the caller's tensor changes after
``compress`` returns (the next backward accumulates into ``.grad`` in place, the DDP hook
divides its payloads in place before the all-reduce, ErrorFeedback hands the input itself
to the inner codec when there is no residual yet, a caller may frame a payload later). A
view would let those rewrite a payload already sent, so ``none`` keeps exactly one copy,
as bare PyTorch's ``x.clone()`` does.
"""

from __future__ import annotations

import math
from operator import methodcaller

import torch

from .base import HALF_DTYPES, Compressor, Ctx, check_kind, make_ctx
from .wire import Payload

_Tensor = torch.Tensor
_FP32 = torch.float32
_FP64 = torch.float64
_CONTIGUOUS = torch.contiguous_format
_isfinite = math.isfinite
_native = None  # odtkit.engine.native, imported by the first dense call (with odtkit.engine)


def _kernel():
    """odtkit's compiled ops (``flat_copy``, ``cast_checked``, ``uncast``) if they are
    loaded or a build of them exists and ``ODTKIT_NATIVE`` allows them, else None. Never
    compiles them unless ``ODTKIT_NATIVE=1`` requires them (``make setup``, ``odtkit
    native`` and ``odt.lean`` build them)."""
    global _native
    if _native is None:
        from ..engine import native

        native.available()  # loads a build made before; "0" keeps torch's casts
        _native = native
    return _native._state["module"]


class _Dense(Compressor):
    """Shared by the copy and the casts: the step counter and the context of both paths."""

    summable = True  # payloads add up entry by entry (16-bit ones summed in fp32, as
    # PyTorch's fp16 hook does)
    folds_finite_check = True  # no NaN/inf scan of the input at all (module docstring)

    # input dtypes the short path takes (any other input: _compress_any)
    short_dtypes: frozenset[torch.dtype] = frozenset({_FP32})

    def _compress_any(self, tensor: torch.Tensor, name: str) -> tuple[Payload, Ctx]:
        """Any floating input (a subclass, needing grad, strided, another dtype): one flat,
        contiguous payload of its own, checked as on the short path."""
        x = check_kind(tensor, name).detach()
        sent = self._send(x, name)
        step = self._steps.get(name, 0)
        self._steps[name] = step + 1
        return (sent,), make_ctx(name, tuple(tensor.shape), tensor.dtype, step, {})

    def _send(self, x: torch.Tensor, name: str) -> torch.Tensor:
        raise NotImplementedError


class NoCompression(_Dense):
    """The dense baseline: the tensor travels unchanged (one copy, in its own dtype, NaN and
    inf included)."""

    kind = "none"
    unbiased = True
    keep_dtype = True

    # the payload keeps the tensor's dtype, so it always decodes
    short_dtypes = frozenset({_FP32, _FP64, *HALF_DTYPES})

    def compress(self, tensor: torch.Tensor, name: str) -> tuple[Payload, Ctx]:
        # compiled: flat_copy checks the plain case (contiguous CPU, a dtype the short path
        # takes, no grad, not empty) and copies in one call; None sends it to torch's ops
        if tensor.__class__ is _Tensor:
            ops = _kernel()
            if ops is not None:
                sent = ops.flat_copy(tensor)
                if sent is not None:
                    steps = self._steps
                    step = steps.get(name, 0)
                    steps[name] = step + 1
                    return (sent,), make_ctx(name, tuple(tensor.shape), tensor.dtype, step, {})
        return self._compress_torch(tensor, name)

    def _compress_torch(self, tensor: torch.Tensor, name: str) -> tuple[Payload, Ctx]:
        # torch's ops: the short path's checks read no data: a plain tensor, of a dtype it
        # takes, needing no grad (detach), not empty, contiguous (a flat view)
        if tensor.__class__ is not _Tensor:
            return self._compress_any(tensor, name)
        shape = tuple(tensor.shape)
        if (tensor.dtype not in self.short_dtypes or tensor.requires_grad or 0 in shape
                or not tensor.is_contiguous()):
            return self._compress_any(tensor, name)
        sent = tensor.ravel().clone()  # ravel: a view here; the one copy (module docstring)
        steps = self._steps
        step = steps.get(name, 0)
        steps[name] = step + 1
        return (sent,), make_ctx(name, shape, tensor.dtype, step, {})

    def _send(self, x: torch.Tensor, name: str) -> torch.Tensor:
        # one copy, contiguous whatever x's strides, so the flat view never copies again
        return x.clone(memory_format=_CONTIGUOUS).view(-1)

    def decompress(self, payload: Payload, ctx: Ctx) -> torch.Tensor:
        # flat on the wire; sizes passed one by one, which PyTorch parses faster than a tuple
        shape = ctx.shape
        out = payload[0].reshape(*shape) if shape else payload[0].reshape(())
        return out if out.dtype is ctx.dtype else out.to(ctx.dtype)


class _Cast(_Dense):
    """Cast to ``target`` (each subclass sets it and its ``_payload``, the cast to it); the
    receiver casts back to float32 (then the caller's dtype). Refuses a finite entry the
    cast turns into inf; NaN and inf of the input pass (module docstring)."""

    target: torch.dtype
    short_dtypes = frozenset({_FP32, _FP64})  # inputs the payload check alone covers

    # flat tensor -> the wire tensor, called without a Python frame (methodcaller)
    _payload: methodcaller
    _bfloat16: bool  # which cast the compiled cast_checked makes

    def compress(self, tensor: torch.Tensor, name: str) -> tuple[Payload, Ctx]:
        # compiled: cast_checked checks the plain case (contiguous CPU float32, no grad, not
        # empty), casts and flags inf/NaN outputs in one call; None sends it to torch's ops
        if tensor.__class__ is _Tensor:
            ops = _kernel()
            if ops is not None:
                done = ops.cast_checked(tensor, self._bfloat16)
                if done is not None:
                    sent, bad = done
                    if bad:
                        self._settle(sent, tensor, name)
                    steps = self._steps
                    step = steps.get(name, 0)
                    steps[name] = step + 1
                    return (sent,), make_ctx(name, tuple(tensor.shape), _FP32, step, {})
        return self._compress_torch(tensor, name)

    def _compress_torch(self, tensor: torch.Tensor, name: str) -> tuple[Payload, Ctx]:
        # torch's ops: the short path's checks read no data, as NoCompression's (a strided
        # tensor may take it: ravel copies it, then the cast)
        if tensor.__class__ is not _Tensor:
            return self._compress_any(tensor, name)
        shape = tuple(tensor.shape)
        if tensor.dtype not in self.short_dtypes or tensor.requires_grad or 0 in shape:
            return self._compress_any(tensor, name)
        sent = self._payload(tensor.ravel())
        if not _isfinite(sent.sum().item()):  # the one pass: finite unless an entry is not
            self._settle(sent, tensor, name)
        steps = self._steps
        step = steps.get(name, 0)
        steps[name] = step + 1
        return (sent,), make_ctx(name, shape, tensor.dtype, step, {})

    def _send(self, x: torch.Tensor, name: str) -> torch.Tensor:
        # straight to the target (a float64 input is rounded once, as x.to(target) does),
        # a copy of its own even where x already has the target dtype
        sent = x.to(self.target, copy=True, memory_format=_CONTIGUOUS).view(-1)
        if not _isfinite(sent.sum().item()):
            self._settle(sent, x, name)
        if x.dtype in HALF_DTYPES and x.dtype is not self.target:
            back = sent.to(x.dtype)  # what decompress gives back in the caller's dtype
            if not _isfinite(back.sum().item()):
                self._settle(back, x, name, decoded=True)
        return sent

    def _settle(self, sent: torch.Tensor, x: torch.Tensor, name: str, *,
                decoded: bool = False) -> None:
        """``sent`` (the payload, or with ``decoded`` the payload in the caller's float16 or
        bfloat16) has a sum that is inf or NaN. Return if no entry is inf where ``x`` is
        finite: only the 16-bit sum overflowed, or the inf and NaN entries came with ``x``
        and travel as they are. Else raise, naming the largest |value| that became inf."""
        if _isfinite(sent.sum(dtype=_FP64).item()):
            return  # a float64 sum of 16-bit values is finite exactly when every entry is
        flat = x.reshape(-1)
        over = sent.isinf() & flat.isfinite()  # a cast never makes NaN of a non-NaN
        if not bool(over.any()):
            return
        peak = float(flat[over].abs().max())
        if decoded:
            top = torch.finfo(x.dtype).max
            raise ValueError(
                f"tensor {name!r} ({x.dtype}) would decode to inf under {self.kind!r}: it rounds "
                f"|value| {peak:.4g} above the {x.dtype} maximum {top:g}; compress a float32 "
                "copy (tensor.float()), send it as 'none', or scale the gradient down")
        top = torch.finfo(self.target).max
        other = "use 'bf16'" if self.target == torch.float16 else "send it as 'none'"
        raise ValueError(
            f"tensor {name!r} has |value| {peak:.4g} above the {self.kind} maximum {top:.4g}: "
            f"the cast would give inf. Scale the gradient down or {other}"
        )

    def decompress(self, payload: Payload, ctx: Ctx) -> torch.Tensor:
        shape = ctx.shape  # flat on the wire, as NoCompression.decompress
        sent = payload[0]
        if (ctx.dtype is _FP32 and sent.dtype is self.target and sent.is_cpu
                and sent.is_contiguous()):
            ops = _kernel()
            if ops is not None:
                return ops.uncast(sent, shape)  # float32 in the caller's shape, one pass
        out = sent.float().reshape(*shape) if shape else sent.float().reshape(())
        return out if ctx.dtype is _FP32 else out.to(ctx.dtype)


class FP16(_Cast):
    """IEEE half precision: 2 bytes per entry, round to nearest; tiny values flush to 0."""

    kind = "fp16"
    target = torch.float16
    _bfloat16 = False  # cast_checked's flag
    _payload = methodcaller("to", target)


class BF16(_Cast):
    """bfloat16: fp32's range with 8 significant bits, 2 bytes per entry."""

    kind = "bf16"
    target = torch.bfloat16
    _bfloat16 = True
    _payload = methodcaller("to", target)
