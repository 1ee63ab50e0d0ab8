"""Per-layer model summary (shapes, parameters, MACs), the one layer walker behind it and
every other per-layer table (``layer_calls``), and the one backward-MAC formula.

    with layer_calls(model) as calls:      # (name, module, inputs, output) per layer call
        model(x)
"""

from __future__ import annotations

import html
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from .._checks import check_int

_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


class Call(NamedTuple):
    """One call of one layer: its qualified name ("" for the model itself), the module,
    its positional inputs and its output."""

    name: str
    module: nn.Module
    inputs: tuple
    output: object


def is_layer(module: nn.Module) -> bool:
    """A row of a per-layer table: a leaf module, or one holding parameters itself."""
    return next(module.children(), None) is None or any(
        True for _ in module.parameters(recurse=False))


@contextmanager
def layer_calls(model: nn.Module, on_call: Callable[[str, nn.Module, tuple, object], None]
                | None = None, *, on_enter: Callable[[str, nn.Module], None] | None = None,
                every_module: bool = False, always_call: bool = False) -> Iterator[list[Call]]:
    """Watch every layer call of ``model`` while the block runs (forward hooks, removed on
    exit even after an error): the one layer walker of odtkit.

    Without ``on_call`` the yielded list fills with a `Call` per layer call, in the order
    the calls finish (it keeps their tensors alive until dropped). With ``on_call``, it is
    called as ``on_call(name, module, inputs, output)`` instead and the list stays empty.
    ``on_enter(name, module)`` runs before each call. ``every_module``: watch every
    module, layer or not (``is_layer`` tells them apart); ``always_call``: ``on_call``
    runs even when the module's forward raises (torch's ``always_call``).
    """
    calls: list[Call] = []
    handles = []
    try:
        for name, module in model.named_modules():
            if not (every_module or is_layer(module)):
                continue
            if on_enter is not None:
                handles.append(module.register_forward_pre_hook(
                    lambda mod, _inputs, name=name: on_enter(name, mod)))

            def post(mod: nn.Module, inputs: tuple, output: object, name: str = name) -> None:
                if on_call is None:
                    calls.append(Call(name, mod, inputs, output))
                else:
                    on_call(name, mod, inputs, output)

            handles.append(module.register_forward_hook(post, always_call=always_call))
        yield calls
    finally:
        for h in handles:
            h.remove()


def backward_macs(forward_macs: int, *, weight_grad: bool, input_grad: bool) -> int:
    """MACs of one layer call's backward pass, from the MACs of its forward (`layer_macs`).

    The backward of a convolution, linear or norm layer is two products as large as its
    forward: the weight gradient dL/dW (input x output gradient), needed only when the
    weight trains (a frozen layer needs none), and the input gradient dL/dx (output
    gradient x weight), needed only when something before the layer wants a gradient (a
    first layer fed with data needs none, nor does any layer before the first one that
    trains). Bias gradients are sums, not MACs. Training every layer and computing every
    input gradient gives the familiar rule backward = 2 x forward, a step 3 x forward.
    """
    check_int("forward_macs", forward_macs, low=0)
    return forward_macs * (bool(weight_grad) + bool(input_grad))


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode inside the block; every module's own train/eval flag is restored after
    (a plan may keep some modules, e.g. frozen BatchNorm, in eval mode during training)."""
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for module, mode in modes.items():
            module.training = mode


def layer_macs(module: nn.Module, inputs: tuple, output: object) -> int:
    """Multiply-accumulates of one call of ``module`` (whole batch), as seen by a forward hook.

    Conv1d/Conv2d/Conv3d: output elements x (in_channels / groups) x kernel elements.
    Linear: output elements x in_features. BatchNorm: one MAC per output element (the
    per-channel scale and shift). Biases are not counted. Every other module (activations,
    pooling, flatten, dropout, identity) counts 0.
    """
    if not isinstance(output, torch.Tensor):
        return 0
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        kernel = 1
        for k in module.kernel_size:
            kernel *= k
        return output.numel() * (module.in_channels // module.groups) * kernel
    if isinstance(module, nn.Linear):
        return output.numel() * module.in_features
    if isinstance(module, _NORMS):
        return output.numel()
    return 0


@dataclass(frozen=True)
class LayerRow:
    """One call of one layer: its qualified name, type, output shape, own parameters, MACs."""

    name: str
    type: str
    output_shape: tuple[int, ...]
    params: int
    macs: int


def layer_row(name: str, module: nn.Module, inputs: tuple, output: object,
              counted: set[int]) -> LayerRow:
    """The row of one layer call; its own parameters count at its first call only
    (``counted`` holds the ids of the modules already seen)."""
    params = 0 if id(module) in counted else sum(p.numel() for p in module.parameters(False))
    counted.add(id(module))
    shape = tuple(output.shape) if isinstance(output, torch.Tensor) else ()
    return LayerRow(name, type(module).__name__, shape, params, layer_macs(module, inputs, output))


@dataclass(frozen=True)
class Summary:
    """Rows per layer call plus totals; ``table()`` for text, ``_repr_html_`` for notebooks."""

    rows: tuple[LayerRow, ...]
    input_shape: tuple[int, ...]
    total_params: int
    trainable_params: int
    total_macs: int

    def __post_init__(self) -> None:
        if self.total_params < 0 or self.total_macs < 0:
            raise ValueError(f"totals must be >= 0, got params={self.total_params}, "
                             f"macs={self.total_macs}")

    def _cells(self) -> tuple[list[str], list[list[str]], list[str]]:
        header = ["layer", "type", "output shape", "params", "MACs"]
        body = [[r.name, r.type, "x".join(map(str, r.output_shape)), f"{r.params:,}",
                 f"{r.macs:,}"] for r in self.rows]
        total = ["total", "", "", f"{self.total_params:,}", f"{self.total_macs:,}"]
        return header, body, total

    def table(self) -> str:
        """Aligned text table, one line per layer call, totals last."""
        header, body, total = self._cells()
        lines = [header, *body, total]
        widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
        right = (False, False, False, True, True)

        def fmt(cells: list[str]) -> str:
            return "  ".join(c.rjust(w) if r else c.ljust(w)
                             for c, w, r in zip(cells, widths, right, strict=True)).rstrip()

        rule = "-" * len(fmt(header))
        shape = "x".join(map(str, self.input_shape))
        return "\n".join([f"input {shape}", fmt(header), rule, *map(fmt, body), rule,
                          fmt(total), f"trainable params: {self.trainable_params:,}"])

    def __str__(self) -> str:
        return self.table()

    def _repr_html_(self) -> str:
        header, body, total = self._cells()

        def row(cells: list[str], tag: str) -> str:
            return "<tr>" + "".join(f"<{tag}>{html.escape(c)}</{tag}>" for c in cells) + "</tr>"

        rows = [row(header, "th"), *(row(b, "td") for b in body), row(total, "th")]
        return ("<table>" + "".join(rows) + "</table>"
                f"<p>trainable params: {self.trainable_params:,}</p>")


def summary(model: nn.Module, example_input: torch.Tensor) -> Summary:
    """Run ``model`` once (eval mode, no grad; its mode is restored) and tabulate each layer.

    Layers are those of `layer_calls` (leaf modules and any module holding parameters
    directly); a module called twice gives two rows but its parameters count once in
    ``total_params``.
    """
    if not isinstance(example_input, torch.Tensor):
        raise TypeError(f"example_input must be a torch.Tensor, got {type(example_input).__name__}")
    rows: list[LayerRow] = []
    counted: set[int] = set()

    def row(name: str, module: nn.Module, inputs: tuple, output: object) -> None:
        rows.append(layer_row(name or type(module).__name__, module, inputs, output, counted))

    with layer_calls(model, row), eval_mode(model), torch.no_grad():
        model(example_input)
    return Summary(
        rows=tuple(rows),
        input_shape=tuple(example_input.shape),
        total_params=sum(r.params for r in rows),
        trainable_params=sum(p.numel() for p in model.parameters() if p.requires_grad),
        total_macs=sum(r.macs for r in rows),
    )
