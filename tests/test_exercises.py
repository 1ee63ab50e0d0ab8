"""Lab 00's exercise check accepts the right answer and explains wrong ones."""

from __future__ import annotations

import pytest
from torch import nn

from odtkit.lab import check_training_state_bytes
from odtkit.training import state_copies


def _model() -> nn.Module:
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    for p in model[0].parameters():
        p.requires_grad_(False)
    return model  # trainable: 5*3 + 3 = 18 values


@pytest.mark.parametrize(("optimizer", "right"), [("sgd", 18 * 4 * 2), ("sgd-m", 18 * 4 * 3),
                                                   ("adam", 18 * 4 * 4)])
def test_right_answer_passes(optimizer, right, capsys):
    result = check_training_state_bytes(right, _model(), optimizer=optimizer)
    assert result.ok is True and bool(result)
    assert "Correct" in capsys.readouterr().out


@pytest.mark.parametrize(("answer", "hint"), [
    (18 * 4, "weights alone"),
    (18 * 4 * 2, "keeps 1 more"),
    (18 * 4 * 3 * 8, "bits"),
    (18 * 3, "values, not bytes"),
    ((18 + 35) * 4 * 3, "every parameter"),
    (1234, "count the trainable values"),
    ("lots", "give a number"),
])
def test_wrong_answers_are_explained(answer, hint):
    result = check_training_state_bytes(answer, _model(), optimizer="sgd-m", quiet=True)
    assert result.ok is False and not result
    assert hint in result.message


def test_placeholder_is_not_done_and_does_not_raise():
    result = check_training_state_bytes(None, _model(), quiet=True)
    assert result.ok is None and not result
    assert "Not done yet" in str(result)


def test_unknown_optimizer_names_the_choices():
    with pytest.raises(ValueError, match="sgd-m"):
        state_copies("sgdm")
