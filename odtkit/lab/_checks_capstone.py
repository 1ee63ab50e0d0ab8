"""The capstone's exercise checks: the bytes a device uploads per round, and how long that
takes on its link.

Each reference comes from the library (the compressor's own ``nbytes`` on payloads shaped
like the plan's trained entries; the link profile's ``transfer_s``), not from the formula
the student is asked for; each common slip has its own message.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .._checks import check_choice, check_int
from ._capstone import round_bytes
from ._checks_core import CheckResult, check_number, say

__all__ = ["check_round_bytes", "check_round_time"]

_PER_VALUE = {"dense fp32": 4, "fp16": 2}  # the dense compressors: bytes per sent value


def check_round_bytes(answer: Any, plan: Any, compressor: str = "fp16", *,
                      total: int | None = None, quiet: bool = False) -> CheckResult:
    """Capstone: bytes one device uploads per round when its fleet sends the gradient of the
    entries ``plan`` trains (a TrainPlan, or the number of trained entries) through
    ``compressor`` ("fp16" or "dense fp32"), measured with the compressor's ``nbytes``.
    Recognized slips: the other width, every parameter (``plan.total_numel`` or ``total``),
    whole tensors of channel-sparse weights, values instead of bytes, bits, KiB, MiB."""
    check_choice("compressor", compressor, tuple(_PER_VALUE))
    if isinstance(plan, int) and not isinstance(plan, bool):
        trained, whole = {"trained": check_int("plan", plan, low=0)}, None
    elif hasattr(plan, "masks") and hasattr(plan, "trainable"):
        shape_of = dict(zip(plan.names, plan.shapes, strict=True))
        masks = plan.masks()
        trained = {n: int(masks[n].sum()) if n in masks else math.prod(shape_of[n])
                   for n in sorted(plan.trainable)}
        whole, total = sum(math.prod(shape_of[n]) for n in trained), plan.total_numel
    else:
        raise TypeError(f"plan must be a TrainPlan or a number of trained entries (int), got "
                        f"{type(plan).__name__}")
    right = round_bytes({n: torch.ones(k) for n, k in trained.items()}, compressor)
    width = _PER_VALUE[compressor]
    other = 6 - width  # 4 <-> 2
    values = sum(trained.values())
    slips = [(values * other, f"that is {other} bytes per value; {compressor} sends {width}.")]
    if total is not None:
        slips.append((total * width, "that counts every parameter of the model; only the "
                                     "entries the plan trains have a gradient to send."))
    if whole is not None:
        slips.append((whole * width, "that counts whole tensors; a channel-sparse weight "
                                     "trains, and sends, only its selected channels "
                                     "(plan.trainable_numel)."))
    slips.append((values, f"that counts values; each takes {width} bytes."))
    result = check_number(answer, right, slips=slips,
                          right_message=f"{right:,} bytes = {values:,} trained entries x "
                                        f"{width} bytes ({compressor}).",
                          default_hint="which entries have a gradient under the plan, and "
                                       "how many bytes does the compressor send for each?")
    return say(result, quiet)


def check_round_time(answer: Any, nbytes: int, link: str = "ble",
                     quiet: bool = False) -> CheckResult:
    """Capstone: seconds to upload ``nbytes`` on ``link``, as its profile's ``transfer_s``
    (latency + bits / throughput, stretched by a duty cycle), within 0.1%. Recognized
    slips: bytes divided by bits per second, the latency forgotten, the duty cycle
    forgotten, milliseconds instead of seconds."""
    from ..hardware import link as get_link

    net = get_link(link)
    right = net.transfer_s(nbytes)
    latency, duty = net.latency_s or 0.0, net.duty_cycle or 1.0
    rate = net.throughput_bits_per_s
    slips = [(latency + nbytes / rate / duty, "that divides bytes by bits per second: a byte "
                                              "is 8 bits, multiply by 8 first.")]
    if latency:
        slips.append((nbytes * 8 / rate / duty, f"add the link's latency, "
                                                f"{latency * 1e3:g} ms on {net.name}: a "
                                                "transfer waits for it before it starts."))
    if duty != 1.0:
        slips.append((latency + nbytes * 8 / rate, f"{net.name} may be on air only "
                                                   f"{duty:.0%} of the time: divide the "
                                                   "air time by the duty cycle."))
    slips.append((right * 1e3, "that is in milliseconds; give seconds."))
    result = check_number(answer, right, slips=slips, unit="s", rel=1e-3,
                          right_message=f"{right:.4g} s to send {nbytes:,} bytes on "
                                        f"{net.name}.",
                          default_hint="bits = 8 x bytes; time = latency + bits / "
                                       "throughput_bits_per_s.",
                          todo="replace the placeholder with your number of seconds.")
    return say(result, quiet)
