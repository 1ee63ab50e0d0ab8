"""Checks for the lab book's exercises: a right answer passes, a wrong one is explained.

A check never raises on a wrong or missing answer: it returns a `CheckResult`
(truthy only when right) and prints a message, so a notebook with the exercise
still open runs from top to bottom.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .optim import state_copies

__all__ = ["CheckResult", "check_training_state_bytes", "state_copies"]


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


def _say(result: CheckResult, quiet: bool) -> CheckResult:
    if not quiet:
        print(result)
    return result


def check_training_state_bytes(answer: object, model: nn.Module, optimizer: str = "sgd-m",
                               bytes_per_value: int = 4, quiet: bool = False) -> CheckResult:
    """Lab 00: bytes of trainable weights + their gradients + optimizer state.

    Only parameters with ``requires_grad=True`` count (apply the plan first).
    """
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    copies = state_copies(optimizer)
    right = trainable * bytes_per_value * (2 + copies)
    if answer is None or answer is ...:
        return _say(CheckResult(None, "replace the placeholder with your number of bytes."), quiet)
    if isinstance(answer, bool) or not isinstance(answer, (int, float)):
        return _say(CheckResult(False, f"give a number of bytes, got {answer!r}."), quiet)
    if answer == right:
        return _say(CheckResult(True, f"{right:,} bytes = {trainable:,} trainable values x "
                                      f"{bytes_per_value} bytes x (weights + gradients"
                                      f"{' + ' + str(copies) + ' optimizer copies' if copies else ''})."),
                    quiet)
    hints = {
        trainable * bytes_per_value: "that is the weights alone; training also keeps a gradient "
                                     "for each, and the optimizer keeps its own state.",
        trainable * bytes_per_value * 2: "weights and gradients are there, but "
                                         f"{optimizer!r} keeps {copies} more copy(ies) of state.",
        trainable * bytes_per_value * 8 * (2 + copies): "that looks like bits; divide by 8.",
        trainable * (2 + copies): f"that counts values, not bytes: each takes {bytes_per_value}.",
        sum(p.numel() for p in model.parameters()) * bytes_per_value * (2 + copies):
            "that counts every parameter; only those with requires_grad=True train.",
    }
    hint = hints.get(answer, "count the trainable values (requires_grad=True), then bytes per "
                             "value, then how many copies training keeps of each.")
    return _say(CheckResult(False, f"{answer!r} is not it: {hint}"), quiet)
