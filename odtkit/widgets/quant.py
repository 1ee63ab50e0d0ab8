"""Explorer: quantize one layer's weights with a chosen number of bits, per tensor or per
output channel, symmetric or not; see the histogram, the grid and the error.

    ex = odt.widgets.quantization_explorer(conv.weight)
    ex                                        # in a notebook: controls, numbers, figure
    ex.controls["bits"].value = 4             # headless: what is shown follows
    ex.qtensor, ex.error, ex.summary.value

Everything shown comes from odt.quant.quantize and odt.viz.quantization_error /
quantization_plot: the explorer computes nothing of its own.
"""

from __future__ import annotations

import html
from typing import Any

import ipywidgets as w
import matplotlib.pyplot as plt
import torch
from torch import nn

from .._checks import check_choice, check_int
from ..quant import quantize
from ..viz.quant import quantization_error, quantization_plot
from ._figure import png_output

__all__ = ["QuantizationExplorer", "quantization_explorer", "GRANULARITIES"]

GRANULARITIES = ("per-tensor", "per-channel")


class QuantizationExplorer(w.VBox):
    """The controls (``controls[name]``: bits, granularity, symmetric, channel), the shown
    numbers (``summary``), the figure (``plot``) and the values behind them (``qtensor``,
    ``error``)."""

    def __init__(self, weights: torch.Tensor, *, bits: int, granularity: str, symmetric: bool,
                 channel: int) -> None:
        self.weights = weights
        self.controls: dict[str, w.ValueWidget] = {
            "bits": w.IntSlider(value=bits, min=2, max=8, description="bits"),
            "granularity": w.ToggleButtons(options=GRANULARITIES, value=granularity,
                                           description="scale"),
            "symmetric": w.Checkbox(value=symmetric, description="symmetric"),
            "channel": w.IntSlider(value=channel, min=0, max=weights.shape[0] - 1,
                                   description="channel"),
        }
        self.summary = w.HTML()
        self.plot = w.Output()
        self.qtensor: Any = None
        self.error: dict[str, Any] = {}
        for control in self.controls.values():
            control.observe(self._on_change, names="value")
        super().__init__([w.HBox(list(self.controls.values())[:2]),
                          w.HBox(list(self.controls.values())[2:]), self.summary, self.plot])
        self.update()

    def _on_change(self, change: dict) -> None:
        self.update()

    def update(self) -> None:
        """Quantize with the current controls and refresh the numbers and the figure."""
        c = {k: v.value for k, v in self.controls.items()}
        per_channel = c["granularity"] == "per-channel"
        self.controls["channel"].disabled = not per_channel
        self.qtensor = quantize(self.weights, c["bits"], symmetric=c["symmetric"],
                                axis=0 if per_channel else None)
        self.error = quantization_error(self.weights, self.qtensor)
        q = self.qtensor
        kind = "symmetric" if c["symmetric"] else "asymmetric"
        steps = (f"steps {float(q.scale.min()):.3g} to {float(q.scale.max()):.3g}"
                 if per_channel else f"step {float(q.scale):.3g}")
        self.summary.value = (
            f"<b>{c['bits']}-bit {kind}, {html.escape(c['granularity'])}</b>: integers in "
            f"[{q.qmin}, {q.qmax}], {steps}; MSE <b>{self.error['mse']:.3e}</b>, max error "
            f"<b>{self.error['max_abs']:.3e}</b>")
        fig = quantization_plot(self.weights, q, channel=c["channel"] if per_channel else None,
                                figsize=(8.5, 3.2))
        self.plot.outputs = (png_output(fig, "quantization explorer figure"),)
        plt.close(fig)


def quantization_explorer(weights: torch.Tensor | nn.Module, *, bits: int = 4,
                          granularity: str = "per-tensor", symmetric: bool = True,
                          channel: int = 0) -> QuantizationExplorer:
    """The quantization explorer for ``weights`` (a float tensor with output channels on
    axis 0, or a conv / linear layer, whose ``weight`` is taken)."""
    if isinstance(weights, nn.Module):
        weights = weights.weight  # a conv or linear layer: its weight
    quantize(weights, 8, axis=0)  # refuses, with the fix, what cannot be quantized per channel
    check_int("bits", bits, low=2, high=8)  # the slider's range
    check_choice("granularity", granularity, GRANULARITIES)
    check_int("channel", channel, low=0, high=weights.shape[0] - 1)
    return QuantizationExplorer(weights.detach().float(), bits=bits, granularity=granularity,
                                symmetric=bool(symmetric), channel=channel)
