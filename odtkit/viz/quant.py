"""Figures of quantized training: what a quantizer does to one tensor, and the per-layer
gradient/weight norm ratios that decide whether int8 training moves at all.

    err = quantization_error(w, odt.quant.quantize(w, bits=4, axis=0))
    fig = quantization_plot(w, odt.quant.quantize(w, bits=4, axis=0), channel=3)
    fig = norm_ratio_plot({"fp32": r32, "int8": r8, "int8 + QAS": rq})  # odt.quant.norm_ratios
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure

from .._checks import check_int

__all__ = ["quantization_error", "quantization_plot", "norm_ratio_plot", "short_layer_name"]

_STYLES = [("#4C72B0", "o"), ("#DD8452", "s"), ("#55A868", "^"), ("#C44E52", "D"),
           ("#8172B3", "v"), ("#937860", "P"), ("#DA8BC3", "X"), ("#8C8C8C", "*")]


def _check_pair(x: Any, q: Any) -> torch.Tensor:
    if not hasattr(q, "dequantize") or not hasattr(q, "scale"):
        raise TypeError(f"q must be a QTensor (from odt.quant.quantize), got "
                        f"{type(q).__name__}")
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"x must be the float tensor that was quantized, got "
                        f"{getattr(x, 'dtype', type(x).__name__)}")
    if tuple(x.shape) != tuple(q.values.shape):
        raise ValueError(f"x has shape {tuple(x.shape)} but q holds {tuple(q.values.shape)}; "
                         "pass the tensor q was made from")
    return x.detach().double()


def quantization_error(x: torch.Tensor, q: Any) -> dict[str, Any]:
    """How far ``q.dequantize()`` is from ``x``: "mse" and "max_abs" over the tensor, and
    "channel_mse", the MSE per slice along axis 0 (output channels of a weight)."""
    x = _check_pair(x, q)
    err = q.dequantize().double() - x
    per_channel = err.pow(2).reshape(err.shape[0], -1).mean(dim=1) if err.dim() else err.pow(2)
    return {"mse": float(err.pow(2).mean()), "max_abs": float(err.abs().max()),
            "channel_mse": per_channel}


def _levels(q: Any, channel: int | None) -> tuple[np.ndarray, float]:
    """The real values of the grid (every integer in [qmin, qmax]) and its step."""
    pick = 0 if channel is None else channel
    scale = float(q.scale.reshape(-1)[pick])
    zero = int(q.zero_point.reshape(-1)[pick])
    return (np.arange(q.qmin, q.qmax + 1) - zero) * scale, scale


def quantization_plot(x: torch.Tensor, q: Any, *, channel: int | None = None,
                      figsize: tuple[float, float] = (9.0, 3.4)) -> Figure:
    """Left: the histogram of ``x`` (of one output ``channel`` when ``q`` is per channel)
    with the quantization grid as ticks below it; right: the MSE per output channel."""
    xd = _check_pair(x, q)
    if q.axis is not None and q.axis != 0:
        raise ValueError(f"quantization_plot shows channels along axis 0; q has axis={q.axis}")
    if q.axis is None:
        channel = None
    else:
        channel = check_int("channel", 0 if channel is None else channel, low=0,
                            high=x.shape[0] - 1)
    shown = (xd if channel is None else xd[channel]).flatten().numpy()
    levels, step = _levels(q, channel)
    fig, (left, right) = plt.subplots(1, 2, figsize=figsize,
                                      gridspec_kw={"width_ratios": [1.4, 1]})
    left.hist(shown, bins=int(min(60, max(10, shown.size // 4))), color="#4C72B0", alpha=0.8,
              label="values")
    lo, hi = shown.min(), shown.max()
    margin = 0.1 * (hi - lo) + step
    inside = levels[(levels >= lo - margin) & (levels <= hi + margin)]
    left.vlines(inside, 0, 0.07, transform=left.get_xaxis_transform(), color="#C44E52",
                linewidth=1.2, label=f"grid ({len(levels)} levels)")
    left.axvspan(levels[0], levels[-1], color="#55A868", alpha=0.08, label="clip range")
    left.set_xlim(lo - margin, hi + margin)
    where = "the tensor" if channel is None else f"channel {channel}"
    kind = "symmetric" if q.symmetric else "asymmetric"
    left.set_title(f"{q.bits}-bit {kind}, {where}: step {step:.3g}", fontsize="medium")
    left.set_xlabel("value")
    left.set_ylabel("count")
    left.legend(fontsize="small", loc="upper right")
    per_channel = quantization_error(x, q)["channel_mse"].numpy()
    right.bar(np.arange(len(per_channel)), per_channel, width=1.0, color="#DD8452")
    if channel is not None:
        right.axvline(channel, color="#C44E52", linestyle=":", label=f"channel {channel}")
        right.legend(fontsize="small")
    right.set_title("squared error per output channel (MSE)", fontsize="medium")
    right.set_xlabel("output channel")
    right.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    fig.tight_layout()
    return fig


def short_layer_name(path: str) -> str:
    """'blocks.6.block.1.0' -> 'b6.1': a layer path short enough for an axis label."""
    parts = path.replace("blocks.", "b").replace(".block.", ".").split(".")
    if len(parts) > 2 and parts[-1] == "0":
        parts = parts[:-1]
    return ".".join(parts)


def _series(ratios: Any, label: str, kind: str, layers: list[str]) -> np.ndarray:
    if not isinstance(ratios, Mapping):
        raise TypeError(f"series {label!r} is a {type(ratios).__name__}; pass what "
                        "odt.quant.norm_ratios returns ({layer: {'weight': r, 'bias': r}})")
    values = []
    for layer in layers:
        r = ratios.get(layer, {}).get(kind)
        if isinstance(r, torch.Tensor):
            raise TypeError(f"series {label!r} holds per-channel ratios; call norm_ratios "
                            "with per_channel=False for this figure")
        values.append(np.nan if r is None or r <= 0 else float(r))
    return np.array(values)


def norm_ratio_plot(ratios: Mapping[str, Any], *, kinds: tuple[str, ...] = ("weight", "bias"),
                    figsize: tuple[float, float] = (9.0, 3.6)) -> Figure:
    """||grad|| / ||tensor|| per layer, one line with markers per series, one panel per
    kind, on a log axis (the ratios span many decades). ``ratios``: {label:
    odt.quant.norm_ratios(...)}, at most 8 series; layers in the first series' order."""
    if not isinstance(ratios, Mapping) or not ratios:
        raise ValueError("ratios must be a non-empty dict {label: norm_ratios(...)}")
    if len(ratios) > len(_STYLES):
        raise ValueError(f"{len(ratios)} series are too many to read; pass at most "
                         f"{len(_STYLES)}")
    layers = list(next(iter(ratios.values())))
    fig, axes = plt.subplots(1, len(kinds), figsize=figsize, sharey=True, squeeze=False)
    x = np.arange(len(layers))
    for ax, kind in zip(axes[0], kinds, strict=True):
        for i, ((label, series), (color, marker)) in enumerate(zip(ratios.items(), _STYLES,
                                                                  strict=False)):
            # hollow markers after the first series, so lines that coincide stay visible
            ax.plot(x, _series(series, label, kind, layers), color=color, marker=marker,
                    markersize=5, linewidth=1, label=str(label),
                    markerfacecolor=color if i == 0 else "none")
        ax.set_yscale("log")
        ax.set_xticks(x, [short_layer_name(p) for p in layers], rotation=90, fontsize=7)
        ax.set_title(f"{kind}: ||gradient|| / ||{kind}||", fontsize="medium")
        ax.grid(alpha=0.3, which="major")
    axes[0][0].set_ylabel("norm ratio (log scale)")
    axes[0][-1].legend(fontsize="small")
    fig.tight_layout()
    return fig
