"""Lab 04's helpers: the NEq exercise check (right answers in every numeric type, each
common slip named), the table and the figures."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import odtkit as odt

lab = odt.lab
DELTA, VELOCITY = [0.2, 0.04, 0.0], [0.0, 0.04, -0.5]  # worked out by hand in the lab


def _by_torch() -> tuple[torch.Tensor, torch.Tensor]:
    """NEq on NEQ_OUTPUTS from odt.sparse.neuron_delta and the recursion, independently of
    the check."""
    y0, y1, y2 = lab.NEQ_OUTPUTS
    d1 = odt.sparse.neuron_delta(y0, y1)
    d2 = odt.sparse.neuron_delta(y1, y2)
    v1 = lab.NEQ_MU * 0 - (0 - d1)
    return d2, lab.NEQ_MU * v1 - (d1 - d2)


def test_the_hand_worked_answer_is_the_library_s():
    d2, v2 = _by_torch()
    assert torch.allclose(d2, torch.tensor(DELTA), atol=1e-6)
    assert torch.allclose(v2, torch.tensor(VELOCITY), atol=1e-6)


@pytest.mark.parametrize("convert", [
    list, tuple, np.array, lambda v: np.array(v, dtype=np.float32), torch.tensor,
    lambda v: torch.tensor(v, dtype=torch.float64), lambda v: torch.tensor(v).half(),
])
def test_right_answers_pass_in_any_numeric_type(convert):
    assert lab.check_neq(convert(DELTA), convert(VELOCITY), quiet=True)
    d2, v2 = _by_torch()
    assert lab.check_neq(d2, v2, quiet=True)


@pytest.mark.parametrize("neuron, delta, velocity", [
    (0, 0.2, 0), (0, 0.2, 0.0), (1, 0.04, 0.04), (2, 0, -0.5), (2, np.float64(0.0), -0.5),
    (2, torch.tensor(0), torch.tensor(-0.5)), (1, np.array([0.04]), [0.04]),
])
def test_one_neuron_answers_as_floats_ints_numpy_torch(neuron, delta, velocity):
    result = lab.check_neq(delta, velocity, neuron=neuron, quiet=True)
    assert result, result.message
    assert f"neuron {neuron}" in result.message


def _plain_delta() -> list[float]:
    y0, y1, y2 = lab.NEQ_OUTPUTS
    return (1 - F.cosine_similarity(y1, y2, dim=1)).tolist()


@pytest.mark.parametrize("delta, velocity, says", [
    ([0.8, 0.96, 1.0], VELOCITY, "cosine similarity itself"),
    ([0.4, 0.0, 1.0], VELOCITY, "delta after epoch 1"),
    ([1.0, 0.04, 1.0], VELOCITY, "before training"),
    (_plain_delta(), VELOCITY, "zero in both epochs"),
    ([0.3, 0.04, 0.0], VELOCITY, "delta = 1 - cos"),
    (DELTA, [0.0, -0.04, 0.5], "sign is flipped"),
    (DELTA, [0.0, 0.04, 0.5], "|v|"),
    (DELTA, [-0.2, 0.04, -1.0], "no momentum"),
    (DELTA, [0.4, -0.04, 1.5], "change of delta has the wrong sign"),
    (DELTA, [0.1, 0.02, 0.0], "mu multiplies only"),
    (DELTA, [0.4, 0.0, 1.0], "velocity after epoch 1"),
    (DELTA, [0.1, 0.1, 0.1], "v_2 = mu * v_1"),
    ([0.2, 0.04], VELOCITY, "one number per neuron (3)"),
    (DELTA, "fast", "must be numbers"),
    (DELTA, [0.0, float("nan"), -0.5], "nan"),
])
def test_each_slip_is_named(delta, velocity, says):
    result = lab.check_neq(delta, velocity, quiet=True)
    assert result.ok is False and says in result.message, result.message


def test_one_neuron_slips_and_bad_indices():
    assert "sign is flipped" in lab.check_neq(0, 0.5, neuron=2, quiet=True).message
    assert "cosine similarity" in lab.check_neq(0.8, 0, neuron=0, quiet=True).message
    assert "one number" in lab.check_neq([0.2, 0.04], 0, neuron=0, quiet=True).message
    for bad in (3, -1, True, "0"):
        assert lab.check_neq(0.2, 0, neuron=bad, quiet=True).ok is False


def test_a_missing_answer_is_not_done_and_messages_print(capsys):
    assert lab.check_neq(..., ..., quiet=True).ok is None
    assert lab.check_neq(DELTA, None, quiet=True).ok is None
    lab.check_neq(DELTA, VELOCITY)
    assert capsys.readouterr().out.startswith("Correct: ")


def _cells() -> dict:
    row = {"mean": 0.6, "std": 0.01, "test_acc": [0.59, 0.61], "share_used": [0.087, 0.088],
           "curve_mean": [0.55, 0.6]}
    return {m: {"0.088": row, "0.5": {**row, "mean": 0.7}} for m in ("random", "velocity")}


def test_table_and_budget_figure():
    text = lab.format_selection_table(_cells())
    assert "0.600 ± 0.010 ( 8.8%)" in text and "50.0%" in text and "velocity" in text
    fig = lab.budget_accuracy_figure(_cells(), before=0.5)
    ax = fig.axes[0]
    assert [line.get_label() for line in ax.get_lines()] == ["random", "velocity",
                                                             "before fine-tuning"]
    assert np.allclose(ax.get_lines()[0].get_xdata(), [8.8, 50.0])
    plt.close(fig)


def test_velocity_figure_needs_a_velocity_run(task):
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 16), torch.nn.ReLU(),
                              torch.nn.Linear(16, 10))
    small = __import__("dataclasses").replace(task, x_train=task.x_train[:96],
                                              y_train=task.y_train[:96],
                                              x_test=task.x_test[:64], y_test=task.y_test[:64])
    res = odt.sparse.train_selected(net, small, 0.5, "velocity", epochs=2, seed=0, lr=0.05)
    fig = lab.velocity_figure(res, "1")
    assert len(fig.axes) == 3  # heatmap, its colour bar, the shares
    assert len(fig.axes[1].get_lines()) == 2
    plt.close(fig)
    static = odt.sparse.train_selected(net, small, 0.5, "static", epochs=1, seed=0)
    with pytest.raises(ValueError, match="velocity"):
        lab.velocity_figure(static, "1")
