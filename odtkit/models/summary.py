"""Per-layer model summary (shapes, parameters, MACs) from forward hooks."""

from __future__ import annotations

import html
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


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

    Layers are leaf modules and any module holding parameters directly; a module called
    twice gives two rows but its parameters count once in ``total_params``.
    """
    if not isinstance(example_input, torch.Tensor):
        raise TypeError(f"example_input must be a torch.Tensor, got {type(example_input).__name__}")
    rows: list[LayerRow] = []
    counted: set[int] = set()
    handles = []

    def hook_for(name: str):
        def hook(module: nn.Module, inputs: tuple, output: object) -> None:
            own = sum(p.numel() for p in module.parameters(recurse=False))
            params = 0 if id(module) in counted else own
            counted.add(id(module))
            shape = tuple(output.shape) if isinstance(output, torch.Tensor) else ()
            rows.append(LayerRow(name, type(module).__name__, shape, params,
                                 layer_macs(module, inputs, output)))
        return hook

    for name, module in model.named_modules():
        is_leaf = next(module.children(), None) is None
        if is_leaf or any(True for _ in module.parameters(recurse=False)):
            handles.append(module.register_forward_hook(hook_for(name or type(module).__name__)))
    try:
        with eval_mode(model), torch.no_grad():
            model(example_input)
    finally:
        for h in handles:
            h.remove()
    return Summary(
        rows=tuple(rows),
        input_shape=tuple(example_input.shape),
        total_params=sum(r.params for r in rows),
        trainable_params=sum(p.numel() for p in model.parameters() if p.requires_grad),
        total_macs=sum(r.macs for r in rows),
    )
