"""The training and quantization figures, read as a student sees them: each series its own
colour and marker, at most eight a plot, linear accuracy axes, text at least 9 px."""

from __future__ import annotations

from types import SimpleNamespace

import matplotlib
import pytest
import torch
from _figures import legend_text_px, series, smallest_text_px, styles

import odtkit as odt

matplotlib.use("Agg")
from matplotlib import pyplot as plt  # noqa: E402


def _runs(n: int) -> dict:
    # hand-made histories: run k reaches 0.5 + 0.05 k over three epochs
    return {f"run {k}": SimpleNamespace(test_acc=[0.3, 0.4, 0.5 + 0.05 * k]) for k in range(n)}


def test_accuracy_curves_give_each_run_its_colour_and_marker():
    fig = odt.viz.accuracy_curves(_runs(7))
    ax = fig.axes[0]
    assert len(series(ax)) == 7
    pairs = styles(ax)
    assert len({c for c, _ in pairs}) == 7 and len({m for _, m in pairs}) == 7
    assert ax.get_yscale() == "linear" and ax.get_ylim() == (0.0, 1.0)
    assert [line.get_ydata()[-1] for line in series(ax)] == pytest.approx(
        [0.5 + 0.05 * k for k in range(7)])
    assert legend_text_px(ax) >= 9 and smallest_text_px(fig) >= 9
    plt.close(fig)
    with pytest.raises(ValueError, match="11 runs in one plot cannot each get their own"):
        odt.viz.accuracy_curves(_runs(11))


def test_norm_ratio_plot_series_differ_and_the_log_axis_is_said():
    layers = {"conv": {"weight": 0.1, "bias": 0.2}, "fc": {"weight": 0.3, "bias": 0.4}}
    ratios = {"fp32": layers, "int8": {k: {kk: v * 1e-6 for kk, v in d.items()}
                                       for k, d in layers.items()}}
    fig = odt.viz.norm_ratio_plot(ratios)
    for ax in fig.axes:
        assert len(series(ax)) == 2 and len(set(styles(ax))) == 2
        assert ax.get_yscale() == "log"  # ratios span decades: positions, not lengths
    assert "log scale" in fig.axes[0].get_ylabel()
    assert smallest_text_px(fig) >= 9 and legend_text_px(fig.axes[-1]) >= 9
    plt.close(fig)


def test_domain_samples_label_both_rows_readably():
    task = odt.datasets.load("digits-shift")
    fig = odt.viz.domain_samples(task, n=4)
    assert len(fig.axes) == 8
    assert [fig.axes[0].get_ylabel(), fig.axes[4].get_ylabel()] == ["source", "target"]
    assert smallest_text_px(fig) >= 9
    plt.close(fig)


def test_quantization_plot_is_readable():
    torch.manual_seed(0)
    x = torch.randn(8, 4, 3, 3)
    fig = odt.viz.quantization_plot(x, odt.quant.quantize(x, 4, axis=0))
    assert smallest_text_px(fig) >= 9
    plt.close(fig)
