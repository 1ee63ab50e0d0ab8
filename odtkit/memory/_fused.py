"""PyTorch's fused inference path for attention: ``nn.TransformerEncoderLayer`` and
``nn.MultiheadAttention`` in eval mode run as one fused kernel
(``_transformer_encoder_layer_fwd``, ``_native_multi_head_attention``) when nothing in
them needs a gradient, so a real step sees one top-level op where the trace (whose
tensors carry a torch-function mode, which turns the fused path off) sees many.

The trace records the modules whose static conditions allow the fused path (eval mode,
batch-first, even head count, packed projections, no hooks, no autocast, a batched
self-attention input); the step model then treats such a module's ops as one top-level
op wherever the plan leaves no gradient inside it, as PyTorch's own check does.
"""

from __future__ import annotations

from typing import Any

from torch import nn


def _hooked(module: nn.Module) -> bool:
    return any(len(getattr(m, "_forward_hooks", {})) + len(getattr(m, "_forward_pre_hooks", {}))
               for m in module.modules())


def _attention_ok(mha: nn.MultiheadAttention) -> bool:
    return (not mha.training and mha.batch_first and mha.num_heads % 2 == 0
            and mha.in_proj_weight is not None and mha._qkv_same_embed_dim
            and mha.bias_k is None and mha.bias_v is None and not mha.add_zero_attn)


def _eligible(module: nn.Module) -> str | None:
    """"layer" or "attention" if ``module``'s static conditions allow the fused path."""
    if isinstance(module, nn.TransformerEncoderLayer):
        attn = module.self_attn
        ok = (not module.training and attn.batch_first and attn.in_proj_bias is not None
              and attn._qkv_same_embed_dim and module.activation_relu_or_gelu
              and module.norm1.eps == module.norm2.eps and attn.num_heads % 2 == 0)
        return "layer" if ok and not _hooked(module) else None
    if isinstance(module, nn.MultiheadAttention):
        return "attention" if _attention_ok(module) and not _hooked(module) else None
    return None


def fusable_spans(model: nn.Module, spans: list, v_shape: list,
                  autocast: object) -> tuple[tuple[int, int], ...]:
    """(first op, end op) of every module call that runs fused when nothing in it trains."""
    if autocast is not None:
        return ()
    kinds = {name: kind for name, m in model.named_modules()
             if name and (kind := _eligible(m)) is not None}
    out = []
    for name, first, end, inputs in spans:
        kind = kinds.get(name)
        if kind is None or not inputs or len(v_shape[inputs[0]]) != 3:
            continue
        if kind == "attention" and not (len(inputs) >= 3 and inputs[0] == inputs[1] == inputs[2]):
            continue  # the fused path is for self-attention only
        if end > first:
            out.append((first, end))
    return tuple(out)


def fused_calls(t: Any, nodes: dict) -> tuple[frozenset[int], frozenset[int]]:
    """The trace's (``_trace.Trace``) top-level op ends and storages freed within a top-level op, with each
    fusable module call that makes no backward node (``nodes``: op index -> flags) as one
    top-level op: its temporaries are freed inside it."""
    if not t.fused_spans:
        return t.op_ends, t.freed_within
    ends, within = set(t.op_ends), set(t.freed_within)
    for first, end in t.fused_spans:
        if any(first <= i < end for i in nodes):
            continue  # something in it needs a gradient: the unfused path runs
        made = {s for i in range(first, end) for s in t.ops[i].new}
        for i in range(first, end - 1):
            ends.discard(i)
            within.update(t.dies_after[i])
        within.update(s for s in t.dies_after[end - 1] if s in made)
        ends.add(end - 1)
    return frozenset(ends), frozenset(within)
