"""Labs 01, 03 and 05's number checks: right answers (hand-computed) pass in any numeric
type, each common slip gets its own message."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from odtkit.lab import (
    check_channel_sparse_count,
    check_conv_saved_bytes,
    check_relu_saved_bytes,
    check_topk_payload_bytes,
)

TYPES = [int, float, np.int64, np.float64, np.array, torch.tensor,
         lambda v: torch.tensor(v, dtype=torch.float32)]

VALUES = 8 * 32 * 32 * 32            # the ReLU's output: 262,144 values
STOCK, LEAN = VALUES * 4, VALUES // 8  # float32 output; a 1-bit mask
CONV = 8 * 16 * 32 * 32 * 4          # the conv's input, float32
SPARSE = 64 * 8 * 3 * 3 + 64         # a quarter of 32 input channels, every bias
TOPK = 1000 * (4 + 4)                # k = 0.1% of 1e6, float32 value + int32 index


@pytest.mark.parametrize("convert", TYPES)
def test_right_answers_pass_in_any_numeric_type(convert):
    assert check_conv_saved_bytes(convert(CONV), quiet=True).ok is True
    assert check_relu_saved_bytes(convert(STOCK), quiet=True).ok is True
    assert check_relu_saved_bytes(convert(LEAN), engine="lean", quiet=True).ok is True
    assert check_channel_sparse_count(convert(SPARSE), quiet=True).ok is True
    assert check_topk_payload_bytes(convert(TOPK), quiet=True).ok is True


@pytest.mark.parametrize(("answer", "hint"), [
    (CONV / 1024, "in KiB"), (CONV / 2**20, "in MiB"), (CONV * 8, "bits"),
    (CONV + 8 * 32 * 32 * 32 * 4, "keeps its input, not its output"),
    (np.int64(0), "keeps the input even though the weight is frozen"),
])
def test_conv_slips(answer, hint):
    result = check_conv_saved_bytes(answer, quiet=True)
    assert result.ok is False and hint in result.message


@pytest.mark.parametrize(("engine", "answer", "hint"), [
    ("pytorch", LEAN, "1-bit mask the lean engine keeps"),
    ("pytorch", VALUES, "each float32 value takes 4 bytes"),
    ("pytorch", 2 * STOCK, "not its input too"),
    ("pytorch", STOCK / 1024, "in KiB"),
    ("pytorch", 1.0, "in MiB"),
    ("pytorch", STOCK * 8, "bits"),
    ("lean", STOCK, "what stock PyTorch keeps"),
    ("lean", VALUES, "torch.bool"),
    ("lean", 32, "in KiB"),
    ("lean", 999, "how many bits"),
])
def test_relu_slips(engine, answer, hint):
    result = check_relu_saved_bytes(answer, engine=engine, quiet=True)
    assert result.ok is False and hint in result.message


def test_relu_reference_at_another_shape_and_bad_engine():
    assert check_relu_saved_bytes(2 * 4 * 6 * 6 * 4, 2, 4, 6, quiet=True).ok
    assert check_relu_saved_bytes(2 * 4 * 8 * 8 // 8, 2, 4, 8, engine="lean", quiet=True).ok
    with pytest.raises(ValueError, match="lean"):
        check_relu_saved_bytes(0, engine="fast", quiet=True)


@pytest.mark.parametrize(("answer", "hint"), [
    (64 * 8 * 9, "forgot the bias"),
    (64 * 32 * 9 + 64, "the whole layer"),
    (64 * 8 + 64, "forgot the kernel"),
    (SPARSE * 4, "that is bytes"),
    (100, "kept input channels"),
])
def test_channel_sparse_slips(answer, hint):
    result = check_channel_sparse_count(answer, quiet=True)
    assert result.ok is False and hint in result.message


def test_channel_sparse_other_shape_rounds_channels_up():
    # ratio 1/8 of 12 input channels keeps ceil(1.5) = 2 of them
    assert check_channel_sparse_count(6 * 2 * 1 + 6, 12, 6, 1, 0.125, quiet=True).ok


@pytest.mark.parametrize(("answer", "hint"), [
    (4000, "values alone"), (12000, "int64"), (4_000_000, "dense gradient"),
    (2000, "not bytes"), (TOPK / 1024, "in KiB"), (TOPK * 8, "bits"),
    (1234, "k = ceil"),
])
def test_topk_payload_slips(answer, hint):
    result = check_topk_payload_bytes(answer, quiet=True)
    assert result.ok is False and hint in result.message


def test_topk_payload_rounds_k_up():
    # k = ceil(0.0025 * 100_100) = ceil(250.25) = 251 entries; 100,100 values need int32
    assert check_topk_payload_bytes(251 * 8, numel=100_100, density=0.0025, quiet=True).ok
    result = check_topk_payload_bytes(250 * 8, numel=100_100, density=0.0025, quiet=True)
    assert result.ok is False and "round up" in result.message


def test_placeholders_are_not_done(capsys):
    for check in (check_relu_saved_bytes, check_channel_sparse_count, check_topk_payload_bytes):
        assert check(None).ok is None
    assert capsys.readouterr().out.count("Not done yet") == 3
