"""Lab 01's exercise check: it accepts the hand-computed answer and explains wrong ones."""

from __future__ import annotations

import pytest

from odtkit.lab import check_conv_saved_bytes


def test_accepts_the_hand_computed_bytes(capsys):
    # stock PyTorch keeps the input: 8 x 16 x 32 x 32 float32 values, 4 bytes each
    result = check_conv_saved_bytes(8 * 16 * 32 * 32 * 4)
    assert result.ok is True and bool(result)
    assert "524,288 bytes" in capsys.readouterr().out


@pytest.mark.parametrize(("batch", "cin", "cout", "size", "k"), [(2, 3, 8, 10, 5), (1, 4, 4, 6, 1)])
def test_the_reference_is_the_input_at_other_shapes(batch, cin, cout, size, k):
    right = batch * cin * size * size * 4
    assert check_conv_saved_bytes(right, batch, cin, cout, size, k, quiet=True).ok
    assert not check_conv_saved_bytes(right + 4, batch, cin, cout, size, k, quiet=True)


@pytest.mark.parametrize(("answer", "hint"), [
    (8 * 16 * 32 * 32, "each float32 value takes 4 bytes"),
    (8 * 32 * 32 * 32 * 4, "that is the output"),
    (8 * 16 * 32 * 32 * 4 + 32 * 16 * 9 * 4, "the weight is a parameter"),
    (16 * 32 * 32 * 4, "one sample"),
    (0, "keeps the input even though the weight is frozen"),
    (12345, "which tensor does the backward read"),
])
def test_wrong_answers_are_explained(answer, hint):
    result = check_conv_saved_bytes(answer, quiet=True)
    assert result.ok is False and hint in result.message


def test_lean_engine_keeps_nothing_here():
    assert check_conv_saved_bytes(0, engine="lean", quiet=True).ok
    wrong = check_conv_saved_bytes(8 * 16 * 32 * 32 * 4, engine="lean", quiet=True)
    assert wrong.ok is False and "lean engine needs it only for the weight gradient" in wrong.message


def test_placeholder_is_not_done_yet_and_never_raises(capsys):
    result = check_conv_saved_bytes(None)
    assert result.ok is None and not result
    assert "Not done yet" in capsys.readouterr().out
    assert check_conv_saved_bytes("many", quiet=True).ok is False


def test_an_unknown_engine_is_named():
    with pytest.raises(ValueError, match="unknown engine 'leen'.*pytorch, lean"):
        check_conv_saved_bytes(0, engine="leen", quiet=True)
