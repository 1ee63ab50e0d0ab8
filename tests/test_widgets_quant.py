"""The quantization explorer, driven headlessly: each control changes what is shown to
what odt.quant.quantize gives for that setting, computed here directly; and the figures
behind it (odt.viz quantization_error, quantization_plot, norm_ratio_plot)."""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest
import torch

import odtkit as odt

matplotlib.use("Agg")


@pytest.fixture()
def weights():
    gen = torch.Generator().manual_seed(0)
    # 6 output channels whose ranges differ 30x, as BN-folded weights do
    spread = torch.tensor([0.05, 0.1, 0.3, 0.5, 1.0, 1.5]).reshape(6, 1, 1, 1)
    return torch.randn(6, 4, 3, 3, generator=gen) * spread + 0.02


def _shown(ex, weights):
    """What the explorer should show, from odt.quant.quantize and plain arithmetic."""
    c = {k: v.value for k, v in ex.controls.items()}
    q = odt.quant.quantize(weights, c["bits"], symmetric=c["symmetric"],
                           axis=0 if c["granularity"] == "per-channel" else None)
    shape = (-1, 1, 1, 1) if q.axis == 0 else ()
    err = (q.values.double() - q.zero_point.double().reshape(shape)) \
        * q.scale.double().reshape(shape) - weights.double()
    return q, float(err.pow(2).mean()), float(err.abs().max())


def test_every_control_is_followed(weights):
    ex = odt.widgets.quantization_explorer(weights, bits=8)
    seen = set()
    for name, value in [("bits", 4), ("granularity", "per-channel"), ("symmetric", False),
                        ("bits", 2), ("channel", 5), ("granularity", "per-tensor"),
                        ("symmetric", True), ("bits", 7)]:
        ex.controls[name].value = value
        q, mse, worst = _shown(ex, weights)
        assert torch.equal(ex.qtensor.values, q.values), name
        assert torch.equal(ex.qtensor.scale, q.scale) and torch.equal(ex.qtensor.zero_point,
                                                                      q.zero_point), name
        assert ex.error["mse"] == pytest.approx(mse, rel=1e-6), name
        assert ex.error["max_abs"] == pytest.approx(worst, rel=1e-6), name
        shown = float(ex.summary.value.split("MSE <b>")[1].split("</b>")[0])
        assert shown == pytest.approx(mse, rel=2e-3), name
        assert f"[{q.qmin}, {q.qmax}]" in ex.summary.value, name
        assert ex.plot.outputs and "image/png" in ex.plot.outputs[0]["data"], name
        seen.add((ex.summary.value, ex.plot.outputs[0]["data"]["image/png"]))
    assert len(seen) == 8  # every change changed what is shown (the channel: the figure)


def test_fewer_bits_and_per_tensor_scales_cost_accuracy(weights):
    ex = odt.widgets.quantization_explorer(weights, bits=8, granularity="per-tensor")
    mse = {}
    for bits in (8, 4, 2):
        for gran in ("per-tensor", "per-channel"):
            ex.controls["bits"].value = bits
            ex.controls["granularity"].value = gran
            mse[bits, gran] = ex.error["mse"]
    assert mse[8, "per-tensor"] < mse[4, "per-tensor"] < mse[2, "per-tensor"]
    for bits in (8, 4, 2):
        assert mse[bits, "per-channel"] < mse[bits, "per-tensor"]
    assert ex.controls["channel"].disabled is False
    ex.controls["granularity"].value = "per-tensor"
    assert ex.controls["channel"].disabled is True


def test_takes_a_layer_and_refuses_bad_settings(weights):
    conv = torch.nn.Conv2d(4, 6, 3)
    ex = odt.widgets.quantization_explorer(conv, bits=3)
    assert torch.equal(ex.qtensor.values, odt.quant.quantize(conv.weight.detach(), 3).values)
    with pytest.raises(ValueError, match=r"bits must be an integer in \[2, 8\], got bits=9"):
        odt.widgets.quantization_explorer(weights, bits=9)
    with pytest.raises(ValueError, match="unknown granularity 'per-row'"):
        odt.widgets.quantization_explorer(weights, granularity="per-row")
    with pytest.raises(ValueError, match=r"channel must be an integer in \[0, 5\]"):
        odt.widgets.quantization_explorer(weights, channel=6)
    with pytest.raises(TypeError, match="floating-point"):
        odt.widgets.quantization_explorer(weights.to(torch.int8))


def test_quantization_error_by_hand():
    x = torch.tensor([[0.0, 0.26, -1.0], [0.5, 0.74, 1.0]])
    q = odt.quant.quantize(x, 2, symmetric=True)  # levels {-1, 0, 1} * 1.0
    err = odt.viz.quantization_error(x, q)
    diffs = np.array([[0.0, -0.26, 0.0], [0.5, 0.26, 0.0]])  # round-half-even: 0.5 -> 0
    assert err["mse"] == pytest.approx((diffs**2).mean())
    assert err["max_abs"] == pytest.approx(0.5)
    assert err["channel_mse"].tolist() == pytest.approx((diffs**2).mean(axis=1).tolist())
    with pytest.raises(ValueError, match="pass the tensor q was made from"):
        odt.viz.quantization_error(x[:1], q)


def test_quantization_plot_draws_the_grid(weights):
    q = odt.quant.quantize(weights, 3, symmetric=False, axis=0)
    fig = odt.viz.quantization_plot(weights, q, channel=2)
    left = fig.axes[0]
    grid = [c for c in left.collections if "grid" in str(c.get_label())][0]
    xs = sorted(seg[0][0] for seg in grid.get_segments())
    levels = (np.arange(-4, 4) - int(q.zero_point[2])) * float(q.scale[2])
    shown = [v for v in levels if left.get_xlim()[0] <= v <= left.get_xlim()[1]]
    assert xs == pytest.approx(sorted(shown)) and len(xs) >= 7
    assert "channel 2" in left.get_title()
    matplotlib.pyplot.close(fig)


def test_norm_ratio_plot_is_log_scale_with_one_line_per_series():
    ratios = {label: {"a.0": {"weight": s * 0.1, "bias": s * 0.2},
                      "blocks.6.block.1.0": {"weight": s * 0.3, "bias": s * 0.4}}
              for label, s in [("fp32", 1.0), ("int8", 1e-8), ("int8 + QAS", 1.1)]}
    fig = odt.viz.norm_ratio_plot(ratios)
    for ax, kind in zip(fig.axes, ("weight", "bias"), strict=True):
        assert ax.get_yscale() == "log"
        assert [t.get_text() for t in ax.get_xticklabels()] == ["a.0", "b6.1"]
        lines = ax.get_lines()
        assert [ln.get_label() for ln in lines] == list(ratios)
        assert len({(ln.get_color(), ln.get_marker()) for ln in lines}) == 3
        for ln, series in zip(lines, ratios.values(), strict=True):
            assert list(ln.get_ydata()) == pytest.approx([series[p][kind] for p in series])
    matplotlib.pyplot.close(fig)
    with pytest.raises(ValueError, match="at most 8"):
        odt.viz.norm_ratio_plot({str(i): ratios["fp32"] for i in range(9)})
    with pytest.raises(TypeError, match="per_channel=False"):
        odt.viz.norm_ratio_plot({"x": {"a": {"weight": torch.ones(3), "bias": 1.0}}})


def test_explorer_figures_are_pngs_at_the_notebooks_100_dpi():
    import base64
    import io

    import matplotlib.image as mpimg
    from matplotlib.figure import Figure

    from odtkit.widgets._figure import png_output

    fig = Figure(figsize=(4.0, 2.5))
    fig.add_subplot().plot([0, 1], [1, 0])
    out = png_output(fig, "a figure")
    pixels = mpimg.imread(io.BytesIO(base64.b64decode(out["data"]["image/png"])), format="png")
    assert pixels.shape[:2] == (250, 400)  # 2.5 x 4 inches at 100 dpi
    assert out["output_type"] == "display_data" and out["data"]["text/plain"] == "<a figure>"
