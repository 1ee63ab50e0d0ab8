"""What every exercise check shares: the result type, and reading and judging one number.

A check never raises on a wrong or missing answer: it returns a `CheckResult` (truthy only
when right) and prints it, so a notebook with the exercise still open runs top to bottom.
An answer may be any real number: int, float, a numpy scalar or 0-d array, a one-element
torch tensor, or an expression already evaluated; bool, NaN and non-numbers are refused
with a message naming what was given.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = ["CheckResult", "say", "read_number", "check_number", "unit_slips"]


@dataclass(frozen=True)
class CheckResult:
    """Outcome of an exercise check: ``ok`` is None while the answer is still missing."""

    ok: bool | None
    message: str

    def __bool__(self) -> bool:
        return bool(self.ok)

    def __str__(self) -> str:
        mark = {True: "Correct", False: "Not yet", None: "Not done yet"}[self.ok]
        return f"{mark}: {self.message}"


def say(result: CheckResult, quiet: bool) -> CheckResult:
    """Print ``result`` unless ``quiet``; return it."""
    if not quiet:
        print(result)
    return result


def _describe(value: Any) -> str:
    text = repr(value)
    text = text if len(text) <= 60 else text[:57] + "..."
    return f"{type(value).__name__} {text}"


def read_number(value: Any, what: str = "your answer") -> tuple[int | float | None, str]:
    """``value`` as a Python int (when it is a whole number) or float, or (None, why not).

    Placeholders (None, ...) give (None, "") so that the caller can say "not done yet".
    """
    if value is None or value is ...:
        return None, ""
    if isinstance(value, (bool, np.bool_)) or (
            isinstance(value, (torch.Tensor, np.ndarray)) and value.dtype in (torch.bool, bool)):
        return None, (f"{what} must be a number, got the bool {value!r}: True and False are "
                      "not counts.")
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            return None, (f"{what} must be one number, got a tensor of shape "
                          f"{tuple(value.shape)}.")
        if value.is_complex():
            return None, f"{what} must be a real number, got {_describe(value)}."
        value = value.detach().cpu().reshape(()).item()
    elif isinstance(value, np.ndarray):
        if value.size != 1:
            return None, f"{what} must be one number, got an array of shape {value.shape}."
        value = value.reshape(()).item()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, str):
        return None, (f"{what} must be a number, got the text {value!r}: write the number "
                      "(or an expression) without quotes.")
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None, f"{what} must be a number, got {_describe(value)}."
    number = float(value)
    if not math.isfinite(number):
        return None, f"{what} must be a finite number, got {value!r}."
    if isinstance(value, numbers.Integral):
        return int(value), ""
    return (int(number) if number.is_integer() else number), ""


def unit_slips(right: float, unit: str = "bytes") -> list[tuple[float, str]]:
    """The unit slips of a byte count: KiB or MiB instead of bytes, bits instead of bytes."""
    if unit != "bytes" or right == 0:
        return []
    return [
        (right / 1024, "that is the answer in KiB; give it in bytes (x 1024)."),
        (right / 2**20, "that is the answer in MiB; give it in bytes (x 1024 x 1024)."),
        (right / 1000, "that is the answer in kB (1000 bytes); give it in bytes."),
        (right * 8, "that is bits, not bytes; divide by 8."),
    ]


def _same(a: float, b: float, rel: float) -> bool:
    return math.isclose(a, b, rel_tol=rel, abs_tol=1e-12) if rel else a == b


def check_number(answer: Any, right: float, *, slips: Sequence[tuple[float, str]] = (),
                 unit: str = "bytes", rel: float = 0.0, right_message: str = "",
                 default_hint: str = "", todo: str = "") -> CheckResult:
    """Judge one number: right (exactly when ``rel`` is 0, else within ``rel``), a named
    slip (the first of ``slips``, then the unit slips, that matches), or wrong with
    ``default_hint``. Unit slips match within 0.5%, so a rounded 5.74 (KiB) is recognized.
    """
    got, problem = read_number(answer)
    if got is None and not problem:
        what = f"your number of {unit}" if unit else "your number"
        return CheckResult(None, todo or f"replace the placeholder with {what}.")
    if got is None:
        return CheckResult(False, problem)
    shown = f"{got:,}" if isinstance(got, int) else f"{got:.6g}"
    if _same(got, right, rel):
        return CheckResult(True, right_message or f"{shown} {unit}.")
    for value, message in slips:
        if value != right and _same(got, value, rel or 1e-9):
            return CheckResult(False, f"{shown} is not it: {message}")
    for value, message in unit_slips(right, unit):
        if got and math.isclose(got, value, rel_tol=5e-3):
            return CheckResult(False, f"{shown} is not it: {message}")
    return CheckResult(False, f"{shown} is not it: {default_hint}".rstrip(": "))
