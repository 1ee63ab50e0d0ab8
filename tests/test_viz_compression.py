"""Lab 05's figures are readable at the size the notebook shows them: at most PER_PANEL
series a plot, no two series alike in colour or marker, legend text of at least 9 px at the
figure's dpi, bars on linear axes as long as the values given (by hand), rows of
benchmarks/results/lab05.json drawn like histories."""

from __future__ import annotations

import matplotlib
import pytest
from matplotlib import pyplot as plt

import odtkit as odt
from odtkit.distributed.federated import RoundTime
from odtkit.distributed.simulate import DistHistory
from odtkit.viz import compression as vc

matplotlib.use("Agg")

LABELS = ["dense fp32", "fp16", "bf16", "top-k 0.1% + EF", "top-k 0.1%", "random-k 1% + EF",
          "threshold + EF", "DGC 0.1%", "QSGD 4 bit", "TernGrad", "signSGD", "EF-signSGD",
          "PowerSGD r2 + EF"]  # the 13 compressors of lab 05


def _row(i: int) -> dict:
    """A row as benchmarks/lab05.py writes it: payload 100 * (i + 1) bytes, accuracy
    50 + i percent after the last of three epochs."""
    return {"bytes_per_worker_per_round": 100.0 * (i + 1), "final_acc": [0.5 + i / 100],
            "curve_seed0": [0.1, 0.3, 0.5 + i / 100], "exchange": "allgather",
            "wire_sent_per_worker_per_round": 150.0 * (i + 1),
            "wire_recv_per_worker_per_round": 450.0 * (i + 1)}


@pytest.fixture(autouse=True)
def _close():
    yield
    plt.close("all")


def _series(ax) -> list[tuple[str, str]]:
    """(colour, marker) of every marked series of a plot (error bars' own lines skipped)."""
    return [(matplotlib.colors.to_hex(line.get_color()), str(line.get_marker()))
            for line in ax.lines if line.get_marker() not in ("None", "", " ", None, "|", "_")]


def _legend_px(fig) -> list[float]:
    return [t.get_fontsize() * fig.dpi / 72 for ax in fig.axes if ax.get_legend()
            for t in ax.get_legend().get_texts()]


def test_series_styles_are_all_different():
    styles = [tuple(vc.series_style(i).values()) for i in range(14)]
    assert len({c for c, _ in styles}) == 14 and len({m for _, m in styles}) == 14
    pairs = [tuple(vc.series_style(i).values()) for i in range(60)]
    assert len(set(pairs)) == 60


def test_scatter_of_thirteen_runs_is_split_and_readable():
    runs = {label: _row(i) for i, label in enumerate(LABELS)}
    fig = odt.viz.bytes_vs_accuracy(runs, dense_bytes=1400)
    assert len(fig.axes) == 2
    per_axes = [len(ax.containers) for ax in fig.axes]
    assert per_axes == [7, 6] and max(per_axes) <= vc.PER_PANEL <= 8
    points = [c.lines[0].get_xydata()[0].tolist() for ax in fig.axes for c in ax.containers]
    assert points == [[100.0 * (i + 1), pytest.approx(50.0 + i)] for i in range(13)]
    styles = [s for ax in fig.axes for s in _series(ax)]
    assert len(styles) == 13 and len(set(styles)) == 13
    assert all(len({c for c, _ in _series(ax)}) == len(_series(ax)) for ax in fig.axes)
    assert fig.axes[0].get_xlim() == fig.axes[1].get_xlim()  # shared: comparable panels
    assert min(_legend_px(fig)) >= 9
    labels = [t.get_text() for ax in fig.axes for t in ax.get_legend().get_texts()]
    assert labels == LABELS


def test_curves_of_thirteen_runs_are_split_with_distinct_markers():
    runs = {label: _row(i) for i, label in enumerate(LABELS)}
    fig = odt.viz.compression_curves(runs)
    assert [len(ax.lines) for ax in fig.axes] == [7, 6]
    styles = [s for ax in fig.axes for s in _series(ax)]
    assert len(set(styles)) == 13
    assert fig.axes[1].lines[0].get_ydata().tolist() == [10.0, 30.0, pytest.approx(57.0)]
    assert min(_legend_px(fig)) >= 9


def test_round_time_bars_are_linear_stacked_and_labelled():
    times = {"dense": {"ble": RoundTime(0.001, 1.5, 1.5), "lte": RoundTime(0.001, 0.4, 0.4)},
             "top-k": {"ble": RoundTime(0.001, 0.01, 0.02), "lte": {"compute_s": 0.001,
                                                                 "upload_s": 0.002,
                                                                 "download_s": 0.003}}}
    fig = odt.viz.round_time_bars(times)
    assert [ax.get_xscale() for ax in fig.axes] == ["linear", "linear"]
    ble = fig.axes[0]
    spans = sorted((round(p.get_x(), 9), round(p.get_x() + p.get_width(), 9))
                   for p in ble.patches)  # compute, upload, download end to end
    assert spans == [(0, 0.001), (0, 0.001), (0.001, 0.011), (0.001, 1.501), (0.011, 0.031),
                     (1.501, 3.001)]
    totals = {t.get_text().strip() for t in ble.texts}
    assert totals == {"3 s", "31 ms"}  # 1 ms + 1.5 s + 1.5 s; 1 + 10 + 20 ms
    assert {t.get_text().strip() for t in fig.axes[1].texts} == {"801 ms", "6 ms"}
    assert min(_legend_px(fig)) >= 9


def test_wire_bars_relative_to_payload_on_a_linear_axis():
    ring = DistHistory(loss=[1.0], train_acc=[0.5], test_acc=[0.5], time_s=[1.0], steps=[2],
                       samples=[8], up_bytes_per_round=[100, 300],
                       total_bytes_per_round=[400, 1200], wire_sent_bytes_per_round=[150, 450],
                       wire_recv_bytes_per_round=[150, 450], exchange="allreduce", workers=4,
                       dense_bytes=400)
    runs = {"ring": ring, "gather": _row(0)}
    fig = odt.viz.wire_bytes_bars(runs, relative=True)
    ax = fig.axes[0]
    assert ax.get_xscale() == "linear"
    widths = sorted(round(p.get_width(), 9) for p in ax.patches)
    assert widths == [1.5, 1.5, 1.5, 4.5]  # ring all-reduce 1.5x each way; 3 x 150 / 100
    texts = " ".join(t.get_text() for t in ax.texts)
    assert "1.50x" in texts and "4.50x" in texts and "allreduce" in texts
    assert min(_legend_px(fig)) >= 9
    fig = odt.viz.wire_bytes_bars(runs)
    assert fig.axes[0].get_xscale() == "linear"
    assert sorted(p.get_width() for p in fig.axes[0].patches) == [100, 150, 200, 300, 300, 450]
    with pytest.raises(ValueError, match="wire_sent_per_worker_per_round"):
        odt.viz.wire_bytes_bars({"x": {"bytes_per_worker_per_round": 1}})


def test_rank_sweep_and_federated_rows():
    ranks = {r: _row(r) for r in (1, 2, 4, 8)}
    fig = odt.viz.powersgd_rank_sweep(ranks)
    assert fig.axes[1].lines[0].get_ydata().tolist() == [200.0, 300.0, 500.0, 900.0]
    assert fig.axes[1].get_yscale() == "linear" and fig.axes[1].get_ylim()[0] == 0
    acc_line = [line for line in fig.axes[0].lines if line.get_marker() != "None"][0]
    assert acc_line.get_marker() != fig.axes[1].lines[0].get_marker()
    assert min(_legend_px(fig)) >= 9
    fed = {"a": {"time_s_per_round": [2.0, 3.0], "test_acc": [0.2, 0.6]},
           "b": {"time_s_per_round": [1.0, 1.0], "test_acc": [0.3, 0.4]}}
    fig = odt.viz.federated_progress(fed)
    assert fig.axes[0].lines[0].get_xydata().tolist() == [[2.0, 20.0], [5.0, 60.0]]
    assert len(set(_series(fig.axes[0]))) == 2 and min(_legend_px(fig)) >= 9


def test_ablation_points_have_their_own_style():
    runs = {label: _row(i) for i, label in enumerate(LABELS[:6])}
    fig = odt.viz.accuracy_points(runs, dense_bytes=600)
    styles = _series(fig.axes[0])
    assert len(styles) == 6 and len(set(styles)) == 6
    texts = [t.get_text().strip() for t in fig.axes[0].texts]
    assert texts[0] == "50.0%, 6x" and texts[5] == "55.0%, 1x"


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_bad_per_panel_is_named(bad):
    with pytest.raises(ValueError, match=f"per_panel must be a positive integer, got per_panel={bad!r}"):
        odt.viz.bytes_vs_accuracy({"a": _row(0)}, per_panel=bad)


def test_accuracy_against_dense_has_fixed_axes_and_a_labelled_reference():
    fig = odt.viz.accuracy_against_dense(_row(2), _row(0), epochs=6, name="top-k")
    ax = fig.axes[0]
    assert ax.get_xlim() == (0.5, 6.5) and ax.get_ylim() == (0.0, 100.0)
    assert [line.get_label() for line in ax.lines] == ["dense fp32", "top-k"]
    assert ax.lines[0].get_ydata().tolist() == [10.0, 30.0, 50.0]
    assert len(set(_series(ax))) == 2 and min(_legend_px(fig)) >= 9
    with pytest.raises(ValueError, match="epochs must be a positive integer, got epochs=0"):
        odt.viz.accuracy_against_dense(_row(2), _row(0), epochs=0)
