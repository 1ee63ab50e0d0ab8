"""Checks for the lab book's exercises: a right answer passes, a wrong one is explained.

A check never raises on a wrong or missing answer: it returns a `CheckResult`
(truthy only when right) and prints a message, so a notebook with the exercise
still open runs from top to bottom.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..training.optim import state_copies

__all__ = ["CheckResult", "check_training_state_bytes", "check_topk_ef"]


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


# ------------------------------------------------------------------------- the exercise

def check_topk_ef(fn: Callable[..., Any] | None, *, density: float = 0.05, steps: int = 4,
                  quiet: bool = False) -> CheckResult:
    """Check a student's top-k with error feedback against the library's, over ``steps``.

    ``fn(grad, residual, density) -> (sent, new_residual)``: ``sent`` dense (zeros where
    nothing is sent) with the ceil(density * numel) entries of largest |grad + residual|.
    Never raises: returns a ``CheckResult`` (ok True, False with the first difference
    explained, or None for the lab's placeholder that raises NotImplementedError) and
    prints it unless ``quiet``.
    """
    return _say(_check_topk_ef(fn, density, steps), quiet)


def _check_topk_ef(fn: Callable[..., Any] | None, density: float, steps: int) -> CheckResult:
    from .. import compress

    todo = CheckResult(None, "fill in topk_ef_step, then run this cell again")
    if fn is None:
        return todo
    ref = compress.ErrorFeedback(compress.get("topk", density=density))
    gen = torch.Generator().manual_seed(0)
    residual = torch.zeros(7, 19)
    for step in range(steps):
        grad = torch.randn(7, 19, generator=gen)  # (7, 19): 5% of 133 is 6.65, so k = 7
        payload, ctx = ref.compress(grad, "w")
        want_sent, want_residual = ref.decompress(payload, ctx), ref.residual("w")
        try:
            sent, new_residual = fn(grad.clone(), residual.clone(), density)
        except NotImplementedError:
            return todo
        except Exception as err:  # the student's code: report, do not crash the check
            return CheckResult(False, f"calling fn(grad, residual, density) failed at step "
                                      f"{step}: {type(err).__name__}: {err}")
        problem = _diagnose(grad, residual, density, sent, new_residual, want_sent,
                            want_residual, step)
        if problem:
            return CheckResult(False, problem)
        residual = want_residual.clone()
    return CheckResult(True, f"matches odt.compress top-k with error feedback over {steps} "
                             "steps")


def _diagnose(grad: torch.Tensor, residual: torch.Tensor, density: float, sent: Any,
              new_residual: Any, want_sent: torch.Tensor, want_residual: torch.Tensor,
              step: int) -> str:
    """An explanation of the first difference from the reference, or '' if none."""
    for what, value in (("sent", sent), ("new_residual", new_residual)):
        if not isinstance(value, torch.Tensor) or value.shape != grad.shape:
            return (f"{what} must be a tensor shaped like grad {tuple(grad.shape)}, got "
                    f"{getattr(value, 'shape', type(value).__name__)}")
    k = want_sent.ne(0).sum().item()
    nonzero = int(sent.ne(0).sum())
    if nonzero != k:
        return (f"step {step}: sent has {nonzero} nonzero entries, expected k = "
                f"ceil(density * numel) = ceil({density} * {grad.numel()}) = {k}")
    if not torch.allclose(sent, want_sent, atol=1e-6):
        plain = grad.flatten().abs().topk(k).indices
        if sent.flatten().ne(0).nonzero().flatten().sort().values.equal(plain.sort().values):
            return (f"step {step}: you picked the top-k of |grad|; error feedback picks the "
                    "top-k of |grad + residual| and sends those entries of grad + residual")
        signed = (grad + residual).flatten().topk(k).indices
        if sent.flatten().ne(0).nonzero().flatten().sort().values.equal(signed.sort().values):
            return (f"step {step}: you picked the k largest values; pick the k largest "
                    "magnitudes (abs) so that large negative entries are sent too")
        return (f"step {step}: sent differs from the reference (max difference "
                f"{float((sent - want_sent).abs().max()):.3g}): send (grad + residual) at "
                "the k positions of largest |grad + residual|")
    if not torch.allclose(new_residual, want_residual, atol=1e-6):
        return (f"step {step}: new_residual differs (max difference "
                f"{float((new_residual - want_residual).abs().max()):.3g}); it must be "
                "grad + residual - sent: everything not sent waits for the next step")
    return ""
