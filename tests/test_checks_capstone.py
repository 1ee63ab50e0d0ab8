"""The capstone's exercise checks: every right answer passes whatever its numeric type, and
each common slip gets its own message (references computed here by hand)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import odtkit as odt
from odtkit.lab import check_round_bytes, check_round_time


@pytest.fixture(scope="module")
def plan():
    model = nn.Sequential(nn.Conv2d(8, 16, 3), nn.Flatten(), nn.Linear(16 * 4 * 4, 10))
    # conv weight at half its input channels, every bias, the linear weight not at all
    return odt.sparse.plan(model, biases=2, weights={"0": 0.5})


def test_round_bytes_right_in_any_numeric_type(plan):
    trained = 16 * 4 * 3 * 3 + 16 + 10  # conv weight on 4 of 8 inputs, both biases
    assert plan.trainable_numel == trained
    for answer in (2 * trained, np.int64(2 * trained), torch.tensor(2 * trained),
                   float(2 * trained), np.array(2.0 * trained)):
        result = check_round_bytes(answer, plan, compressor="fp16", quiet=True)
        assert result.ok is True, (answer, result)
    assert check_round_bytes(4 * trained, plan, compressor="dense fp32", quiet=True).ok
    assert check_round_bytes(2 * 100, 100, quiet=True).ok  # a count of entries works too


@pytest.mark.parametrize("answer, words", [
    (4 * 602, "4 bytes per value; fp16 sends 2"),
    (2 * (16 * 8 * 9 + 16 + 256 * 10 + 10), "every parameter"),
    (2 * (16 * 8 * 9 + 16 + 10), "whole tensors"),
    (602, "counts values"),
    (2 * 602 / 1024, "KiB"),
    (2 * 602 * 8, "bits"),
    (1234, "which entries have a gradient"),
])
def test_round_bytes_names_the_slip(plan, answer, words):
    result = check_round_bytes(answer, plan, compressor="fp16", quiet=True)
    assert result.ok is False and words in result.message, result.message


def test_round_bytes_placeholder_bool_and_bad_compressor(plan, capsys):
    assert check_round_bytes(None, plan).ok is None
    assert "Not done yet" in capsys.readouterr().out
    assert "bool" in check_round_bytes(True, plan, quiet=True).message
    with pytest.raises(ValueError, match="dense fp32"):
        check_round_bytes(10, plan, compressor="topk")
    with pytest.raises(TypeError, match="TrainPlan"):
        check_round_bytes(10, "bias-only")
    with pytest.raises(ValueError, match="plan=-5"):  # a count of entries is never negative
        check_round_bytes(10, -5)


def test_round_time_right_in_any_numeric_type():
    nbytes = 45_772
    ble = 0.0075 + nbytes * 8 / 1_438_000  # BLE: 7.5 ms connection interval, 1438 kbit/s
    for answer in (ble, np.float64(ble), torch.tensor(ble, dtype=torch.float64),
                   round(ble, 4)):
        assert check_round_time(answer, nbytes, "ble", quiet=True).ok is True, answer
    lora = nbytes * 8 / 5470 / 0.01  # LoRaWAN: 5.47 kbit/s, on air 1% of the time
    assert check_round_time(lora, nbytes, "lorawan", quiet=True).ok is True


@pytest.mark.parametrize("link, answer, words", [
    ("ble", 0.0075 + 45_772 / 1_438_000, "multiply by 8"),
    ("ble", 45_772 * 8 / 1_438_000, "latency, 7.5 ms"),
    ("ble", 1e3 * (0.0075 + 45_772 * 8 / 1_438_000), "milliseconds"),
    ("lorawan", 45_772 * 8 / 5470, "duty cycle"),
    ("ble", 0.5, "latency + bits / throughput"),
])
def test_round_time_names_the_slip(link, answer, words):
    result = check_round_time(answer, 45_772, link, quiet=True)
    assert result.ok is False and words in result.message, result.message


def test_round_time_placeholder_and_text():
    assert check_round_time(None, 100, quiet=True).ok is None
    assert "without quotes" in check_round_time("0.26", 100, quiet=True).message
    with pytest.raises(ValueError, match="ble"):
        check_round_time(0.1, 100, "blue")
