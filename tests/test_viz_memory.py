"""The memory figures, read as a student sees them: what is live at the peak stacks up to
the peak, each series its own colour and marker, linear axes, text at least 9 px."""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest
from _figures import legend_text_px, series, smallest_text_px, styles

import odtkit as odt

matplotlib.use("Agg")
from matplotlib import pyplot as plt  # noqa: E402


@pytest.fixture(scope="module")
def reports():
    model = odt.models.create("mbv2-tiny", input_shape=(3, 16, 16)).eval()
    x = odt.models.example_input(model, batch_size=2)
    plan = odt.plan(model, "bias-only")
    return {"stock": odt.estimate(model, x, plan), "lean": odt.estimate(model, x, plan,
                                                                         engine="lean")}


def test_peak_bars_stack_the_components_up_to_the_peak(reports):
    fig = odt.viz.peak_bars(reports, budget_bytes=320 * 1024, budget_label="SRAM")
    ax = fig.axes[0]
    assert ax.get_yscale() == "linear"  # bar lengths are compared
    scale = 2**20 if max(r.peak_bytes for r in reports.values()) >= 2**20 else 2**10
    tops = np.zeros(2)
    for bars in ax.containers:  # one container per component, bottom to top
        tops = np.maximum(tops, [b.get_y() + b.get_height() for b in bars])
    assert tops * scale == pytest.approx([r.peak_bytes for r in reports.values()], rel=1e-9)
    names = [t.get_text() for t in ax.get_legend().get_texts()]
    assert names[:5] == list(odt.memory.PEAK_COMPONENTS)[::-1]  # as stacked, top first
    assert names[5:] == ["peak", "SRAM 320 KiB"]
    looks = {(bars.patches[0].get_facecolor(), bars.patches[0].get_hatch())
             for bars in ax.containers}
    assert len(looks) == len(ax.containers)  # each component its own colour and hatch
    assert legend_text_px(ax) >= 9 and smallest_text_px(fig) >= 9
    plt.close(fig)


def test_peak_bars_take_a_fit_and_refuse_what_has_no_components(reports):
    fit = odt.device("stm32f746").fit(reports["lean"])
    fig = odt.viz.peak_bars({"SRAM": fit})
    heights = sum(b.patches[0].get_height() for b in fig.axes[0].containers)
    assert heights * 2**10 == pytest.approx(fit.needed_bytes)  # KiB on this axis
    plt.close(fig)
    meas = odt.measure(odt.models.create("mlp"), odt.models.example_input(
        odt.models.create("mlp"), batch_size=2), "full", rss=False)
    with pytest.raises(ValueError, match="'measured' has no peak components"):
        odt.viz.peak_bars({"measured": meas})


def test_timeline_series_differ_in_colour_and_marker(reports):
    fig = odt.viz.memory_timeline(reports)
    ax = fig.axes[0]
    assert len(series(ax)) == 2 <= 8
    pairs = styles(ax)
    assert len(set(pairs)) == 2 and all(m not in ("None", "") for _, m in pairs)
    assert len({c for c, _ in pairs}) == 2 and len({m for _, m in pairs}) == 2
    assert ax.get_yscale() == "linear"
    assert legend_text_px(ax) >= 9 and smallest_text_px(fig) >= 9
    plt.close(fig)


def test_category_bars_are_linear_and_readable(reports):
    fig = odt.viz.memory_bars(reports, budget_bytes=320 * 1024)
    ax = fig.axes[0]
    assert ax.get_yscale() == "linear" and len(ax.containers) == 4
    assert legend_text_px(ax) >= 9 and smallest_text_px(fig) >= 9
    plt.close(fig)
    fig = odt.viz.saved_bytes_per_layer(reports, top=8)
    ax = fig.axes[0]
    assert ax.get_xscale() == "linear" and len(ax.containers) == 2
    assert legend_text_px(ax) >= 9 and smallest_text_px(fig) >= 9
    plt.close(fig)
