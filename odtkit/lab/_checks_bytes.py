"""Exercise checks whose answer is a number of bytes or values (labs 00, 01, 03 and 05).

Each reference comes from the real thing (the model's parameters, a saved-tensor
measurement, the library's plan or compressor), not from the formula the student is asked
for; each common slip has its own message.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from .._checks import choice_error
from ..training.optim import state_copies
from ._checks_core import CheckResult, check_number, say
from ._memory import conv_saved_bytes, relu_saved_bytes

__all__ = ["check_training_state_bytes", "check_conv_saved_bytes", "check_relu_saved_bytes",
           "check_channel_sparse_count", "check_topk_payload_bytes"]

_ENGINES = ("pytorch", "lean")  # odtkit.memory.ENGINES


def check_training_state_bytes(answer: Any, model: nn.Module, optimizer: str = "sgd-m",
                               bytes_per_value: int = 4, quiet: bool = False) -> CheckResult:
    """Labs 00: bytes of trainable weights + their gradients + optimizer state.

    Only parameters with ``requires_grad=True`` count (apply the plan first). Recognized
    slips: too few copies (forgot the gradients or the optimizer state), no biases, every
    parameter instead of the trainable ones, values instead of bytes, bits, KiB, MiB.
    """
    copies = state_copies(optimizer)
    named = list(model.named_parameters())
    trainable = sum(p.numel() for _, p in named if p.requires_grad)
    no_bias = sum(p.numel() for n, p in named if p.requires_grad and not n.endswith("bias"))
    every = sum(p.numel() for _, p in named)
    per = 2 + copies
    right = trainable * bytes_per_value * per
    slips = [(trainable * bytes_per_value, "that is the weights alone; training also keeps a "
                                           "gradient for each, and the optimizer its state.")]
    for n in range(2, per):
        slips.append((trainable * bytes_per_value * n,
                      f"that counts {n} copies of each trainable value; training keeps {per}: "
                      f"the weight, its gradient and {optimizer!r}'s {copies} optimizer-state "
                      "copy(ies). You forgot the gradients or the optimizer state."))
    if no_bias != trainable:
        slips.append((no_bias * bytes_per_value * per,
                      "you forgot the biases: they train too (requires_grad=True)."))
    slips += [
        (trainable * per, f"that counts values, not bytes: each takes {bytes_per_value}."),
        (every * bytes_per_value * per, "that counts every parameter; only those with "
                                        "requires_grad=True train."),
    ]
    extra = f" + {copies} optimizer cop{'y' if copies == 1 else 'ies'}" if copies else ""
    result = check_number(
        answer, right, slips=slips,
        right_message=f"{right:,} bytes = {trainable:,} trainable values x {bytes_per_value} "
                      f"bytes x (weights + gradients{extra}).",
        default_hint="count the trainable values (requires_grad=True), then bytes per value, "
                     "then how many copies training keeps of each.")
    return say(result, quiet)


def check_conv_saved_bytes(answer: Any, batch_size: int = 8, in_channels: int = 16,
                           out_channels: int = 32, size: int = 32, kernel_size: int = 3,
                           engine: str = "pytorch", quiet: bool = False) -> CheckResult:
    """Lab 01: the bytes a Conv2d (frozen weight, trainable bias) keeps for backward,
    measured with saved-tensor hooks. Recognized slips: values not bytes, the output, the
    weight counted, one sample, input and output, the wrong engine, bits, KiB, MiB."""
    if engine not in _ENGINES:
        raise choice_error("engine", engine, _ENGINES)
    right = conv_saved_bytes(batch_size, in_channels, out_channels, size, kernel_size, engine)
    input_values = batch_size * in_channels * size * size
    output_bytes = batch_size * out_channels * size * size * 4
    slips = [
        (input_values, "that counts values; each float32 value takes 4 bytes."),
        (output_bytes, "that is the output; the backward of a convolution needs its input."),
        (input_values * 4 + out_channels * in_channels * kernel_size**2 * 4,
         "the weight is a parameter: it lives anyway, so it is not activation memory."),
        (input_values * 4 // batch_size, "that is one sample; the whole batch is kept."),
        (input_values * 4 + output_bytes, "the convolution keeps its input, not its output."),
    ]
    if engine == "pytorch":
        slips.append((0, "stock PyTorch keeps the input even though the weight is frozen: "
                         "one backward formula serves the input, weight and bias gradients."))
    else:
        slips.append((input_values * 4, "stock PyTorch would keep the input, but the lean "
                                        "engine needs it only for the weight gradient, and "
                                        "the weight is frozen."))
    result = check_number(answer, right, slips=slips,
                          right_message=f"{right:,} bytes are kept for backward.",
                          default_hint="which tensor does the backward read to get the input "
                                       "and bias gradients?")
    return say(result, quiet)


def check_relu_saved_bytes(answer: Any, batch_size: int = 8, channels: int = 32,
                           size: int = 32, engine: str = "pytorch",
                           quiet: bool = False) -> CheckResult:
    """Lab 01: the bytes a ReLU after a convolution keeps for backward, stock or lean
    (measured). Recognized slips: values not bytes, the other engine's answer, one byte per
    value (a bool mask), the input and the output, bits, KiB, MiB."""
    if engine not in _ENGINES:
        raise choice_error("engine", engine, _ENGINES)
    right = relu_saved_bytes(batch_size, channels, size, engine)
    values = batch_size * channels * size * size
    stock, lean = relu_saved_bytes(batch_size, channels, size, "pytorch"), \
        relu_saved_bytes(batch_size, channels, size, "lean")
    if engine == "pytorch":
        slips = [(lean, "that is the 1-bit mask the lean engine keeps; stock PyTorch keeps the "
                        "ReLU's whole float32 output."),
                 (values, "that counts values; each float32 value takes 4 bytes."),
                 (2 * values * 4, "the ReLU keeps one tensor (its output), not its input too.")]
    else:
        slips = [(stock, "that is what stock PyTorch keeps (the float32 output); the lean "
                         "engine keeps only which outputs were positive."),
                 (values, "that is one byte per value (a torch.bool mask); the lean engine "
                          "packs the mask at 1 bit per value, 8 values a byte.")]
    result = check_number(answer, right, slips=slips,
                          right_message=f"{right:,} bytes: {values:,} values at "
                                        f"{right * 8 / values:g} bit(s) each.",
                          default_hint="what does the ReLU's backward need to know about each "
                                       "output, and how many bits does that take?")
    return say(result, quiet)


def check_channel_sparse_count(answer: Any, in_channels: int = 32, out_channels: int = 64,
                               kernel_size: int = 3, ratio: float = 0.25,
                               quiet: bool = False) -> CheckResult:
    """Lab 03: trainable values of a Conv2d whose weight trains on ``ratio`` of its input
    channels, bias trained (counted by ``odt.sparse.plan``). Recognized slips: no bias, the
    whole weight, no kernel size, bytes instead of values."""
    from ..sparse import plan

    model = nn.Sequential(nn.Conv2d(in_channels, out_channels, kernel_size))
    right = plan(model, biases=1, weights={"0": ratio}).trainable_numel
    weight = out_channels * in_channels * kernel_size**2
    kept = math.ceil(in_channels * ratio)
    slips = [
        (right - out_channels, "you forgot the bias: it trains in full."),
        (weight + out_channels, "that is the whole layer; only a fraction of the input "
                                "channels of the weight train."),
        (out_channels * kept + out_channels, "you forgot the kernel: each (output, input) "
                                             f"channel pair has {kernel_size} x {kernel_size} "
                                             "weights."),
        (right * 4, "that is bytes; the question asks how many values train."),
    ]
    result = check_number(answer, right, slips=slips, unit="values",
                          right_message=f"{right:,} values train = {out_channels} x {kept} x "
                                        f"{kernel_size}x{kernel_size} weights + "
                                        f"{out_channels} biases.",
                          default_hint="weight values on the kept input channels, then the "
                                       "bias.")
    return say(result, quiet)


def check_topk_payload_bytes(answer: Any, numel: int = 1_000_000, density: float = 0.001,
                             quiet: bool = False) -> CheckResult:
    """Lab 05: bytes of one top-k payload (float32 values + int32 indices, the index type of a
    tensor over 65,535 values), measured with ``odt.compress``'s own ``nbytes``. Recognized slips: values only, int64 indices, the
    dense tensor, floor instead of ceil of k, bits, KiB, MiB."""
    from .. import compress

    comp = compress.get("topk", density=density)
    payload, _ = comp.compress(torch.ones(numel), "w")
    right = comp.nbytes(payload)
    k = math.ceil(density * numel)
    slips = [
        (k * 4, "that is the values alone; the receiver also needs each value's index."),
        (k * 12, "that uses 8-byte (int64) indices; the payload sends int32 indices."),
        (numel * 4, "that is the dense gradient; top-k sends only k values and indices."),
        (math.floor(density * numel) * 8, "k = ceil(density x numel): round up."),
        (k * 2, "that counts values and indices, not bytes: 4 bytes each."),
    ]
    result = check_number(answer, right, slips=slips,
                          right_message=f"{right:,} bytes = k = {k:,} x (4-byte value + "
                                        f"4-byte index), {numel * 4 / right:.0f}x less than "
                                        "dense.",
                          default_hint="k = ceil(density x numel) entries, each a float32 "
                                       "value and an int32 index.")
    return say(result, quiet)
