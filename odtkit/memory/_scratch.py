"""Kernel scratch: what an op allocates and frees inside itself, which no tensor of the
step holds but the allocator's peak counts.

Scratch that the trace sees as aten ops (dropout's noise, a GRU's per-step gates, the
temporaries of ``multi_head_attention_forward``) the step model plays op by op. What a
kernel allocates internally (oneDNN's reordered weights and scratchpads in convolutions
and LSTM layers, the blocked buffers of CPU flash attention) is the library's own
choice: it is asked of the kernel itself. Each such op is run once per shape and
requires-grad pattern on zeros, forward and backward, under ``torch.profiler`` with
``profile_memory=True``, and its scratch (peak within the call minus what it hands back)
is cached. The shapes are the model's, so the probe costs about one step of these ops.
"""

from __future__ import annotations

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from ._hooks import quiet_stderr
from ._trace import Op, Trace

# ops whose kernels allocate scratch of their own (elementwise ops and views do not)
PROBED = frozenset({
    "convolution", "mkldnn_rnn_layer", "_scaled_dot_product_flash_attention_for_cpu",
    "native_layer_norm", "native_group_norm", "native_batch_norm", "max_pool2d_with_indices",
    "addmm", "mm", "bmm", "baddbmm", "avg_pool2d", "_adaptive_avg_pool2d", "embedding",
})
_CACHE: dict[tuple, tuple[int, int]] = {}
_MARK = "odtkit::probe:"


def _key(op: Op, t: Trace, flags: tuple[bool, ...]) -> tuple:
    def one(v: object, a: object) -> object:
        if isinstance(v, int):
            return ("T", t.value_shape[v], t.value_stride[v] if t.value_stride else None,
                    t.value_dtype[v])
        if isinstance(v, tuple):
            return tuple(one(x, None) for x in v)
        return ("S", tuple(a) if isinstance(a, list) else a)
    return (op.name, tuple(one(v, a) for v, a in zip(op.ins, op.args, strict=True)), flags)


def _real(spec: object, needs_grad: bool) -> object:
    if isinstance(spec, tuple) and spec and spec[0] == "T":
        _, shape, stride, dtype = spec
        x = (torch.zeros(shape, dtype=dtype) if stride is None else
             torch.empty_strided(shape, stride, dtype=dtype).zero_())
        return x.requires_grad_(needs_grad and x.is_floating_point())
    if isinstance(spec, tuple) and spec and spec[0] == "S":
        return list(spec[1]) if isinstance(spec[1], tuple) else spec[1]
    return [_real(s, needs_grad) for s in spec]


def _run(key: tuple) -> None:
    name, specs, flags = key
    args = [_real(s, f) for s, f in zip(specs, flags, strict=True)]
    op = getattr(torch.ops.aten, name)
    with torch.enable_grad():
        with record_function(_MARK + "f"):
            out = op(*args)
        first = out[0] if isinstance(out, (tuple, list)) else out
        if any(flags) and first.requires_grad:
            grad = torch.zeros_like(first)
            with record_function(_MARK + "b"):
                torch.autograd.backward(first, grad)
            del grad
    del out, first, args


def _scratch(events: list, start: int, end: int) -> int:
    """Peak bytes allocated within [start, end] above what is still held at its end."""
    running = peak = 0
    for t, nbytes in events:
        if start <= t <= end:
            running += nbytes
            peak = max(peak, running)
    return peak - running


def probe_all(keys: list[tuple]) -> None:
    """Run the uncached ``keys`` in one profiler session and cache their scratch."""
    todo = [k for k in dict.fromkeys(keys) if k not in _CACHE]
    if not todo:
        return
    prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
    failed: set[tuple] = set()
    with quiet_stderr():
        prof.__enter__()
    try:
        for n, k in enumerate(todo):
            with record_function(f"{_MARK}{n}"):
                try:
                    _run(k)
                except (RuntimeError, NotImplementedError, TypeError, ValueError):
                    failed.add(k)  # arguments the trace does not keep (keyword-only ones)
    finally:
        with quiet_stderr():
            prof.__exit__(None, None, None)
    memory, marks = [], {}
    for e in prof.profiler.kineto_results.events():
        if e.name() == "[memory]":
            memory.append((e.start_ns(), e.nbytes()))
        elif e.name().startswith(_MARK):
            marks.setdefault(e.name()[len(_MARK):], []).append((e.start_ns(), e.end_ns()))
    memory.sort()
    outer = sorted((s, e) for name, spans in marks.items() if name.isdigit() for s, e in spans)
    fwd, bwd = sorted(marks.get("f", [])), sorted(marks.get("b", []))
    for k, (s, e) in zip(todo, outer, strict=True):
        f = next(((a, b) for a, b in fwd if s <= a and b <= e), None)
        b = next(((a, c) for a, c in bwd if s <= a and c <= e), None)
        _CACHE[k] = ((0, 0) if k in failed else  # unknown scratch: the tensor peak's
                     (_scratch(memory, *f) if f else 0, _scratch(memory, *b) if b else 0))


def scratch_of(t: Trace, nodes: dict[int, tuple[bool, ...]]) -> dict[int, tuple[int, int]]:
    """op index -> (forward scratch, backward scratch) bytes for every probed op of ``t``;
    ``nodes``: the requires-grad flags of each op that makes a backward node."""
    keys = {}
    for i, op in enumerate(t.ops):
        if op.name in PROBED and op.phase == "forward":
            flags = nodes.get(i, tuple(False for _ in op.ins))
            keys[i] = _key(op, t, flags)
    probe_all(list(keys.values()))
    return {i: _CACHE[k] for i, k in keys.items()}
