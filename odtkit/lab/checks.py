"""Every exercise check of the lab book, in one place.

A check never raises on a wrong or missing answer: it returns a `CheckResult`
(truthy only when right) and prints a message, so a notebook with the exercise
still open runs from top to bottom. Number answers are read by one helper
(`read_number`: int, float, numpy and torch scalars; bool, NaN and text refused with
a message), and each check names the common slips it recognizes in its docstring.

| lab | checks |
|---|---|
| 00 | check_training_state_bytes (last layer, then bias-only with Adam) |
| 01 | check_conv_saved_bytes, check_relu_saved_bytes |
| 02 | check_quantize, check_qparams |
| 03 | check_sparse_scheme, check_channel_sparse_count |
| 04 | check_neq, check_velocity_step |
| 05 | check_topk_ef, check_topk_payload_bytes |
| 06 | check_round_bytes, check_round_time |
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ._checks_bytes import (
    check_channel_sparse_count,
    check_conv_saved_bytes,
    check_relu_saved_bytes,
    check_topk_payload_bytes,
    check_training_state_bytes,
)
from ._checks_capstone import check_round_bytes, check_round_time  # noqa: F401 (re-exported)
from ._checks_core import CheckResult, read_number, say
from ._checks_neq import NEQ_MU, NEQ_OUTPUTS, check_neq
from ._checks_quantize import QUANTIZE_CASES, check_quantize
from ._checks_sparse import check_sparse_scheme
from ._checks_values import check_qparams, check_velocity_step

__all__ = ["CheckResult", "read_number", "check_training_state_bytes", "check_conv_saved_bytes",
           "check_relu_saved_bytes", "check_quantize", "check_qparams", "check_sparse_scheme",
           "check_channel_sparse_count", "check_neq", "check_velocity_step", "check_topk_ef",
           "check_topk_payload_bytes", "NEQ_OUTPUTS", "NEQ_MU", "QUANTIZE_CASES"]


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
    return say(_check_topk_ef(fn, density, steps), quiet)


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
    swapped = (torch.allclose(new_residual, want_sent, atol=1e-6)
               and torch.allclose(sent, want_residual, atol=1e-6))
    if swapped and not torch.allclose(sent, want_sent, atol=1e-6):
        return (f"step {step}: the two results are swapped: you returned (residual, sent); "
                "return (sent, new_residual), what goes on the wire first")
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
