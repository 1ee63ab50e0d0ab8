"""The compression explorer, driven headlessly: setting a control changes the shown numbers
to what the pure functions give for the new setting."""

from __future__ import annotations

import matplotlib
import pytest
import torch

import odtkit as odt
from odtkit.distributed import simulate
from odtkit.distributed.federated import worker_round_time
from odtkit.lab import lab_model

matplotlib.use("Agg")


@pytest.fixture(scope="module")
def explorer():
    torch.set_num_threads(1)
    task = odt.datasets.load("digits").subset(n_train=400, n_test=200)
    return odt.widgets.compression_explorer(task, epochs=2, compressor="topk", density=0.01)


def test_density_control_changes_bytes_and_matches_simulate(explorer):
    before = explorer.bytes_per_round
    explorer.density.value = 0.001
    after = explorer.bytes_per_round
    assert after < before / 5
    hist = simulate(lab_model(explorer.task), explorer.task, workers=4, compressor="topk",
                    density=0.001, error_feedback=True, epochs=2)
    assert after == pytest.approx(sum(hist.up_bytes_per_round) / hist.rounds)
    assert explorer.final_accuracy == hist.test_acc[-1]
    assert f"{after:,.0f} B" in explorer.summary.value


def test_link_control_retimes_without_training(explorer):
    explorer.link.value = "ble"
    slow = explorer.time_per_round_s
    misses = explorer._run.cache_info().misses
    explorer.link.value = "lte"
    assert explorer._run.cache_info().misses == misses  # same run, only re-timed
    assert explorer.time_per_round_s < slow
    hist = explorer._run("topk", explorer.density.value, 0, True, 4)
    want = worker_round_time(hist, explorer.model, device="raspberry-pi-4", link="lte")
    assert explorer.time_per_round_s == pytest.approx(want.total_s)


def test_workers_and_compressor_controls(explorer):
    explorer.compressor.value = "none"
    assert explorer.bytes_per_round == 4 * 50_826 and explorer.density.disabled
    two = explorer.comm_s
    explorer.workers.value = 6  # all-gather: each worker downloads 5 payloads instead of 3
    assert explorer.comm_s > two
    explorer.compressor.value = "powersgd"
    assert not explorer.rank.disabled
    low = explorer.bytes_per_round
    explorer.rank.value = 4
    assert explorer.bytes_per_round > low


def test_bad_link_is_named():
    with pytest.raises(ValueError, match="Did you mean"):
        odt.widgets.compression_explorer(links=("bel",))


def test_axes_stay_fixed_and_dense_reference_is_drawn(explorer):
    """Moving a control redraws the curve on the same axes (epochs 1..N, 0-100 %), with the
    dense fp32 run of the same workers as a labelled reference line."""
    limits = []
    for compressor, density in (("topk", 0.01), ("topk", 0.001), ("signsgd", 0.001)):
        explorer.compressor.value, explorer.density.value = compressor, density
        ax = explorer.figure.axes[0]
        limits.append((ax.get_xlim(), ax.get_ylim()))
        hist = explorer._run(compressor, density if compressor == "topk" else 0.0, 0,
                             explorer.error_feedback.value, explorer.workers.value)
        assert [line.get_label() for line in ax.lines] == ["dense fp32", hist.compressor]
        shown = ax.lines[1].get_ydata().tolist()
        assert shown == pytest.approx([100 * a for a in hist.test_acc])
    assert limits[0] == limits[1] == limits[2] == ((0.5, 2.5), (0.0, 100.0))
    dense = simulate(lab_model(explorer.task), explorer.task, workers=explorer.workers.value,
                     epochs=2)
    ref = explorer.figure.axes[0].lines[0]
    assert ref.get_ydata().tolist() == pytest.approx([100 * a for a in dense.test_acc])
    legend = explorer.figure.axes[0].get_legend()
    assert "dense fp32" in [t.get_text() for t in legend.get_texts()]
    assert min(t.get_fontsize() for t in legend.get_texts()) * explorer.figure.dpi / 72 >= 9
