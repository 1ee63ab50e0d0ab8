"""The per-layer rows of a trace: one per layer call, and one per functional op outside
layers (a residual add), with the module stack the trace needs to name its ops."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from ..models.summary import LayerRow, is_layer, layer_calls
from ..models.summary import layer_row as summary_row


@dataclass(frozen=True)
class LayerCall(LayerRow):
    """One call of a layer (a leaf module, or one holding parameters itself), or one
    functional op outside any layer (a residual add): a row of the per-layer table.
    ``params`` counts a module called twice once."""

    param_names: tuple[str, ...]
    input_value: int | None  # value id of the first tensor argument


def first_tensor(items: tuple) -> torch.Tensor | None:
    """The first tensor among a module call's positional arguments."""
    return next((a for a in items if isinstance(a, torch.Tensor)), None)


def layer_row(name: str, mod: nn.Module, inputs: tuple, output: object, own: tuple[str, ...],
              counted: set[int], input_value: int | None) -> LayerCall:
    """The row of one layer call (its parameters count only at its first call)."""
    row = summary_row(name, mod, inputs, output, counted)
    return LayerCall(row.name, row.type, row.output_shape, row.params, row.macs, own,
                     input_value)


@contextmanager
def watch(model: nn.Module, tracer, calls: list, spans: list) -> Iterator[None]:
    """Through ``layer_calls`` on every module but the model itself: keep the module stack,
    record every layer call and every module's op range and input values (``spans``, for
    blocks that are recomputed). On an error the stack stays put (no ``always_call``)."""
    counted: set[int] = set()
    own = {name: tuple(f"{name}.{n}" for n, _ in module.named_parameters(recurse=False))
           for name, module in model.named_modules()}

    def enter(name: str, mod: nn.Module) -> None:
        if name:  # the model itself is the bottom of the stack already
            tracer.stack.append((name, type(mod), len(tracer.ops)))

    def leave(name: str, mod: nn.Module, inputs: tuple, output: object) -> None:
        if not name:
            return
        first_op = tracer.stack.pop()[2]
        spans.append((name, first_op, len(tracer.ops), tuple(
            v for v in (tracer.vid(a) for a in inputs if isinstance(a, torch.Tensor))
            if v is not None)))
        if is_layer(mod):
            x = first_tensor(inputs)
            row = layer_row(name, mod, inputs, output, own[name], counted,
                            None if x is None else tracer.vid(x))
            calls.append((first_op, len(tracer.ops), row))

    with layer_calls(model, leave, on_enter=enter, every_module=True):
        yield


# ops that move no data of their own: never a row of the per-layer table
_QUIET = frozenset({"view", "_unsafe_view", "t", "transpose", "permute", "unsqueeze", "squeeze",
                    "expand", "alias", "slice", "select", "detach", "empty", "add_"})


def layer_rows(ops: list, calls: list, v_shape: list) -> tuple[tuple, tuple]:
    """Per-layer rows (layer calls plus functional ops outside layers) and op -> row."""
    op_layer = [-1] * len(ops)
    # innermost layer wins: visit the shortest calls first
    for k in sorted(range(len(calls)), key=lambda k: calls[k][1] - calls[k][0]):
        for i in range(calls[k][0], calls[k][1]):
            if op_layer[i] < 0:
                op_layer[i] = k
    rows = [c[2] for c in calls]
    starts = [c[0] for c in calls]
    for i, op in enumerate(ops):
        if op_layer[i] >= 0 or op.phase != "forward":
            continue
        if op.name in _QUIET:  # a view outside layers: bill it to the row before it
            op_layer[i] = op_layer[i - 1] if i else -1
            continue
        name = f"{op.module}.{op.name}" if op.module else op.name
        rows.append(LayerCall(name, op.name, v_shape[op.outs[0]] if op.outs else (), 0, 0, (),
                              next((v for v in op.ins if isinstance(v, int)), None)))
        starts.append(i)
        op_layer[i] = len(rows) - 1
    # rows in forward order
    order = sorted(range(len(rows)), key=lambda r: starts[r])
    position = {old: new for new, old in enumerate(order)}
    return tuple(rows[r] for r in order), tuple(position.get(r, -1) for r in op_layer)
