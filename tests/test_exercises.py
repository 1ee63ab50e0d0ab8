"""Lab 00's exercise check (both exercises): the right answer passes in any numeric type,
each common slip gets its own message."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from odtkit.lab import check_training_state_bytes
from odtkit.training import state_copies


def _model() -> nn.Module:
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    for p in model[0].parameters():
        p.requires_grad_(False)
    return model  # trainable: 5*3 weights + 3 biases = 18 values; all: 35 + 18 = 53


def _bias_only() -> nn.Module:
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    for name, p in model.named_parameters():
        p.requires_grad_(name.endswith("bias"))
    return model  # trainable: 5 + 3 = 8 biases


@pytest.mark.parametrize(("optimizer", "right"), [("sgd", 18 * 4 * 2), ("sgd-m", 18 * 4 * 3),
                                                   ("adam", 18 * 4 * 4)])
def test_right_answer_passes(optimizer, right, capsys):
    result = check_training_state_bytes(right, _model(), optimizer=optimizer)
    assert result.ok is True and bool(result)
    assert "Correct" in capsys.readouterr().out


@pytest.mark.parametrize("convert", [int, float, np.int64, np.float32, np.array, torch.tensor,
                                     lambda v: torch.tensor(v, dtype=torch.float64)])
def test_right_answer_in_any_numeric_type(convert):
    assert check_training_state_bytes(convert(18 * 4 * 3), _model(), quiet=True).ok is True
    assert check_training_state_bytes(convert(8 * 4 * 4), _bias_only(), "adam", quiet=True).ok


@pytest.mark.parametrize(("answer", "hint"), [
    (18 * 4, "weights alone"),
    (18 * 4 * 2, "forgot the gradients or the optimizer state"),
    (15 * 4 * 3, "forgot the biases"),
    (18 * 4 * 3 * 8, "bits"),
    (18 * 4 * 3 / 1024, "in KiB"),
    (18 * 4 * 3 / 2**20, "in MiB"),
    (18 * 3, "values, not bytes"),
    ((18 + 35) * 4 * 3, "every parameter"),
    (1234, "count the trainable values"),
    ("lots", "must be a number"),
    (True, "the bool True"),
])
def test_wrong_answers_are_explained(answer, hint):
    result = check_training_state_bytes(answer, _model(), optimizer="sgd-m", quiet=True)
    assert result.ok is False and not result
    assert hint in result.message


@pytest.mark.parametrize(("answer", "hint"), [
    (8 * 4 * 3, "counts 3 copies"),          # one of Adam's two moments forgotten
    (8 * 4 * 2, "counts 2 copies"),
    (53 * 4 * 4, "every parameter"),
    (round(8 * 4 * 4 / 1024, 3), "in KiB"),
])
def test_bias_only_adam_slips(answer, hint):
    result = check_training_state_bytes(answer, _bias_only(), optimizer="adam", quiet=True)
    assert result.ok is False and hint in result.message
    assert "'adam''s 2 optimizer-state" in result.message or hint in ("every parameter", "in KiB")


def test_placeholder_is_not_done_and_does_not_raise():
    result = check_training_state_bytes(None, _model(), quiet=True)
    assert result.ok is None and not result
    assert "Not done yet" in str(result)


def test_unknown_optimizer_names_the_choices():
    with pytest.raises(ValueError, match="sgd-m"):
        state_copies("sgdm")
