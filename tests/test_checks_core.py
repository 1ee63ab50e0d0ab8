"""The one number reader every exercise check uses: any real number type in, bool, NaN,
text and containers out with a message naming what was given."""

from __future__ import annotations

import fractions

import numpy as np
import pytest
import torch

from odtkit.lab import CheckResult, read_number
from odtkit.lab.checks import check_conv_saved_bytes


@pytest.mark.parametrize("value", [5880, 5880.0, np.int64(5880), np.int32(5880),
                                   np.float32(5880), np.array(5880), np.array([5880.0]),
                                   torch.tensor(5880), torch.tensor(5880.0, dtype=torch.float64),
                                   torch.tensor([5880], dtype=torch.int16),
                                   fractions.Fraction(11760, 2), 49 * 30 * 4])
def test_every_numeric_type_reads_as_the_same_int(value):
    got, problem = read_number(value)
    assert problem == "" and got == 5880 and type(got) is int


@pytest.mark.parametrize("value", [0.25, np.float32(0.25), torch.tensor(0.25), np.array(0.25)])
def test_fractions_stay_floats(value):
    got, problem = read_number(value)
    assert problem == "" and got == 0.25 and type(got) is float


@pytest.mark.parametrize(("value", "words"), [
    (True, "the bool True"), (np.bool_(False), "the bool"), (torch.tensor(True), "the bool"),
    (float("nan"), "finite number, got nan"), (np.float64("inf"), "finite number, got inf"),
    ("5880", "the text '5880'"), ([5880], "got list [5880]"),
    (torch.zeros(2, 3), "tensor of shape (2, 3)"), (np.zeros(4), "array of shape (4,)"),
    (1 + 2j, "got complex"), (torch.tensor(1 + 2j), "real number"),
])
def test_non_numbers_are_named(value, words):
    got, problem = read_number(value, "answer")
    assert got is None and words in problem and problem.startswith("answer must be")


@pytest.mark.parametrize("value", [None, ...])
def test_placeholders_read_as_missing_without_a_message(value):
    assert read_number(value) == (None, "")


def test_a_check_reports_the_reader_s_message_and_never_raises():
    result = check_conv_saved_bytes(torch.ones(3), quiet=True)
    assert isinstance(result, CheckResult) and result.ok is False
    assert "tensor of shape (3,)" in result.message
