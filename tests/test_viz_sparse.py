"""The sparse-update figures draw what they are given: one bar per conv/linear layer as long
as the share of its channels that trains, a filled square where a bias trains, and the
accuracy-memory points, the budget line and the baseline where they are."""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest
from matplotlib.collections import PathCollection
from torch import nn

import odtkit as odt

matplotlib.use("Agg")


def _model() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 16, 3, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Flatten(), nn.Linear(16 * 4 * 4, 10))


def test_plan_rows_follow_the_plan():
    model = _model()
    plan = odt.sparse.plan(model, biases=2, weights={"3": 0.25, "7": 1.0})
    rows = odt.viz.plan_rows(plan)
    assert [r.layer for r in rows] == ["0", "3", "7"]
    # the norm "4" carries the bias of conv "3"; "7" has its own; "0"'s norm bias is frozen
    assert [r.bias for r in rows] == [False, True, True]
    assert [r.weight_share for r in rows] == [0.0, 0.25, 1.0]
    assert [(r.channels, r.of_channels) for r in rows] == [(0, 3), (2, 8), (256, 256)]
    named = dict(model.named_parameters())
    trained = plan.masks()["3.weight"].sum().item() / named["3.weight"].numel()
    assert rows[1].weight_share == trained


def test_plan_figure_bars_are_the_shares():
    model = _model()
    plan = odt.sparse.plan(model, biases=1, weights={"0": 0.5, "7": 1.0})
    fig = odt.viz.sparse_plan_layers(plan)
    left, right = fig.axes
    widths = [p.get_width() for p in right.patches]
    # half of conv "0"'s 3 input channels rounds to 2 of them
    assert widths == [r.weight_share for r in odt.viz.plan_rows(plan)] == [2 / 3, 0.0, 1.0]
    labels = [t.get_text() for t in left.get_yticklabels()]
    assert labels == ["0", "3", "7"]
    filled = [line.get_markerfacecolor() != "white" for line in left.lines]
    assert filled == [False, False, True]  # only the last layer's bias trains
    matplotlib.pyplot.close(fig)
    with pytest.raises(TypeError, match="TrainPlan"):
        odt.viz.sparse_plan_layers({"0.weight": 1.0})


def test_accuracy_figure_puts_the_points_where_they_are():
    trained = {"bias-only": (120 * 1024, 0.61), "last:1": (200 * 1024, 0.58)}
    fig = odt.viz.accuracy_vs_memory(trained, predicted={"plan": (150 * 1024, 0.7)},
                                     budget_bytes=160 * 1024, baseline=0.5)
    ax = fig.axes[0]
    dots, stars = [c for c in ax.collections if isinstance(c, PathCollection)]
    np.testing.assert_allclose(dots.get_offsets(), [[120, 61], [200, 58]])  # KiB, percent
    np.testing.assert_allclose(stars.get_offsets(), [[150, 70]])
    assert [t.get_text() for t in ax.texts] == ["bias-only", "last:1", "plan"]
    budget, baseline = ax.lines
    assert budget.get_xdata()[0] == 160 and baseline.get_ydata()[0] == 50
    assert "KiB" in ax.get_xlabel()
    matplotlib.pyplot.close(fig)


def test_accuracy_figure_refuses_what_it_cannot_draw():
    with pytest.raises(ValueError, match="at least one"):
        odt.viz.accuracy_vs_memory({})
    with pytest.raises(ValueError, match="fraction in"):
        odt.viz.accuracy_vs_memory({"a": (100, 61.0)})
    with pytest.raises(TypeError, match=r"pair \(memory_bytes, accuracy\)"):
        odt.viz.accuracy_vs_memory({"a": 100})


def test_figures_are_readable_at_the_notebook_size():
    from _figures import legend_text_px, smallest_text_px

    model = _model()
    fig = odt.viz.sparse_plan_layers(odt.sparse.plan(model, biases=2, weights={"3": 0.25}))
    assert smallest_text_px(fig) >= 9  # 7 pt at the notebook's 100 dpi
    assert all(ax.get_xscale() == "linear" for ax in fig.axes)  # bar lengths are shares
    matplotlib.pyplot.close(fig)
    fig = odt.viz.accuracy_vs_memory({"bias-only": (120 * 1024, 0.61), "last:1": (200 * 1024, 0.58)},
                                     budget_bytes=160 * 1024, baseline=0.5)
    ax = fig.axes[0]
    assert ax.get_xscale() == ax.get_yscale() == "linear"
    assert smallest_text_px(fig) >= 9 and legend_text_px(ax) >= 9
    matplotlib.pyplot.close(fig)
