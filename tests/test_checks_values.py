"""Labs 02 and 04's real-number checks: hand-computed answers pass in any numeric type
(within tolerance), each common slip gets its own message."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from odtkit.lab import check_qparams, check_velocity_step

# [-1.3, 2.7] on the signed 8-bit grid: 255 steps of 4/255; -1.3 / (4/255) = -82.875 rounds
# to -83, so zero_point = -128 + 83 = -45
SCALE, ZERO = 4 / 255, -45
# v = mu * v_prev - (delta_prev - delta) = 0.5 * 0.2 - (0.1 - 0.4)
VELOCITY = 0.4

TYPES = [float, np.float32, np.float64, np.array, torch.tensor,
         lambda v: torch.tensor(v, dtype=torch.float64)]


@pytest.mark.parametrize("convert", TYPES)
def test_right_answers_pass_in_any_numeric_type(convert):
    assert check_qparams(convert(SCALE), convert(float(ZERO)), quiet=True).ok is True
    assert check_qparams(SCALE, np.int64(ZERO), quiet=True).ok is True
    assert check_qparams(SCALE, torch.tensor(ZERO, dtype=torch.int32), quiet=True).ok is True
    assert check_velocity_step(convert(VELOCITY), quiet=True).ok is True


def test_an_expression_and_rounding_within_tolerance_pass():
    assert check_qparams((2.7 - -1.3) / (2**8 - 1), -128 - round(-1.3 / (4 / 255)),
                         quiet=True).ok
    assert check_qparams(0.0156863, -45, quiet=True).ok  # 6 significant digits
    assert check_velocity_step(0.5 * 0.2 - (0.1 - 0.4), quiet=True).ok


def test_another_range_and_bits():
    # [-0.5, 1] at 4 bits: scale 1.5/15 = 0.1; z = -8 - round(-0.5 / 0.1) = -3
    assert check_qparams(0.1, -3, x_min=-0.5, x_max=1.0, bits=4, quiet=True).ok
    result = check_qparams(0.1, 5, x_min=-0.5, x_max=1.0, bits=4, quiet=True)
    assert result.ok is False and "unsigned range [0, 15]" in result.message


@pytest.mark.parametrize(("scale", "zero", "hint"), [
    (4 / 256, ZERO, "255 steps"),
    (255 / 4, ZERO, "1 / scale"),
    (2.7 / 127, ZERO, "symmetric scale"),
    (0.5, ZERO, "scale = (x_max - x_min) / (2**bits - 1)"),
    (SCALE, 45, "sign is flipped"),
    (SCALE, 83, "unsigned range"),
    (SCALE, -45.125, "round it"),
    (SCALE, -44, "zero_point = qmin - round"),
    (SCALE, True, "the bool True"),
    ("0.0157", ZERO, "the text"),
])
def test_qparams_slips(scale, zero, hint):
    result = check_qparams(scale, zero, quiet=True)
    assert result.ok is False and hint in result.message


@pytest.mark.parametrize(("answer", "hint"), [
    (-0.4, "sign is flipped"),
    (0.3, "no momentum"),
    (0.25, "mu multiplies only the previous velocity"),
    (-0.2, "wrong sign"),
    (0.5, "uses mu = 1"),
    (0.48, "uses mu = 0.9"),
    (0.7, "v = mu * v_prev - (delta_prev - delta)"),
    (np.nan, "finite"),
])
def test_velocity_slips(answer, hint):
    result = check_velocity_step(answer, quiet=True)
    assert result.ok is False and hint in result.message


def test_a_negative_velocity_and_its_magnitude():
    # v = 0.5 * 0 - (0.3 - 0.2) = -0.1: |v| = 0.1 is the flipped sign too, named as such
    assert check_velocity_step(-0.1, v_prev=0.0, delta_prev=0.3, delta=0.2, quiet=True).ok
    assert "NEq keeps updating it" in check_velocity_step(VELOCITY, quiet=True).message
    settled = check_velocity_step(0.0, v_prev=0.2, delta_prev=0.2, delta=0.1, quiet=True)
    assert settled.ok and "at equilibrium, NEq stops updating it" in settled.message
    result = check_velocity_step(0.1, v_prev=0.0, delta_prev=0.3, delta=0.2, quiet=True)
    assert result.ok is False and "sign is flipped" in result.message


def test_placeholders_are_not_done(capsys):
    assert check_qparams(None, None).ok is None
    assert check_velocity_step(...).ok is None
    assert capsys.readouterr().out.count("Not done yet") == 2


def test_a_placeholder_hint_never_names_an_empty_unit():
    from odtkit.lab._checks_core import check_number

    assert "set v to the neuron's new velocity" in check_velocity_step(None, quiet=True).message
    message = check_number(None, 1.0, unit="").message
    assert message == "replace the placeholder with your number.", message
    assert check_number(None, 1.0).message.endswith("your number of bytes.")


def test_vector_checks_refuse_bools_by_name():
    from odtkit.lab import check_neq

    result = check_neq(True, 0.0, neuron=0, quiet=True)
    assert result.ok is False and "got bools" in result.message
    result = check_neq([0.2, 0.04, 0.0], torch.tensor([True, False, True]), quiet=True)
    assert result.ok is False and "got bools" in result.message
