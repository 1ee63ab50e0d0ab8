"""Lab 04's first exercise check: NEq's delta and velocity by hand on three neurons."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ._checks_core import CheckResult
from ._checks_quantize import _as_array

__all__ = ["NEQ_OUTPUTS", "NEQ_MU", "check_neq"]

# outputs of 3 neurons on 2 validation values: before training, after epoch 1, after epoch 2
NEQ_OUTPUTS = (torch.tensor([[1.0, 0.0], [3.0, 4.0], [1.0, 1.0]]),
               torch.tensor([[3.0, 4.0], [6.0, 8.0], [0.0, 0.0]]),
               torch.tensor([[0.0, 1.0], [4.0, 3.0], [0.0, 0.0]]))
NEQ_MU = 0.5


def _neq(outputs: Sequence[torch.Tensor], mu: float, *, delta_fn: Any = None,
         rule: Any = None) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """delta and velocity after each epoch (float64), with an optional slip in either."""
    from ..sparse import neuron_delta

    delta_fn = delta_fn or (lambda a, b: neuron_delta(a, b).double())
    rule = rule or (lambda v, d_prev, d: mu * v - (d_prev - d))
    delta = torch.zeros(len(outputs[0]), dtype=torch.float64)
    v = torch.zeros_like(delta)
    deltas, speeds = [], []
    for a, b in zip(outputs, outputs[1:], strict=False):
        d = delta_fn(a, b)
        v, delta = rule(v, delta, d), d
        deltas.append(delta)
        speeds.append(v)
    return deltas, speeds


def _plain_cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine as torch.nn.functional.cosine_similarity gives it: 0 where a row is zero."""
    return torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=1)


def _slips(mu: float) -> tuple[list[tuple[torch.Tensor, str]], list[tuple[torch.Tensor, str]]]:
    """(values, message) of the common slips: for delta after the last epoch, and for the
    velocity given a right delta."""
    out = NEQ_OUTPUTS
    (d1, d2), (v1, v2) = _neq(out, mu)
    deltas = [
        (1 - d2, "you returned the cosine similarity itself; delta = 1 - cos"),
        (d1, "that is delta after epoch 1; compare the outputs after epoch 2 with those "
             "after epoch 1"),
        (_neq(out[::2], mu)[0][0], "you compared epoch 2 with the outputs before "
                                   "training; NEq compares consecutive epochs"),
        (_neq(out, mu, delta_fn=lambda a, b: 1 - _plain_cos(a, b))[0][1],
         "the third neuron's outputs are zero in both epochs: it did not change, so delta "
         "is 0 (NEq takes cos = 1 when both are zero; F.cosine_similarity returns 0 there)"),
    ]
    speeds = [
        (-v2, "the sign is flipped: v = mu * v_prev - (delta_prev - delta), the recursion "
              "of the NEq reference code and odt.sparse.Velocity (the paper prints the "
              "negative: (delta_prev - delta) - mu * v_prev)"),
        (v2.abs(), "you returned |v|; the velocity keeps its sign (a neuron is at "
                   "equilibrium when |v| < eps, but the recursion needs the signed value)"),
        (d2 - d1, "no momentum: add mu * v_prev, with v_prev = velocity after epoch 1 "
                  "(= delta after epoch 1, since v and delta start at 0)"),
        (mu * v1 + (d1 - d2), "the change of delta has the wrong sign: v = mu * v_prev - "
                              "(delta_prev - delta)"),
        (mu * (v1 - (d1 - d2)), "mu multiplies only the previous velocity: v = mu * v_prev "
                                "- (delta_prev - delta)"),
        (v1, "that is the velocity after epoch 1; go one epoch further"),
    ]
    return deltas, speeds


def _numbers(value: Any, what: str, size: int, neuron: int | None) -> tuple[Any, str]:
    """``value`` as float64 numbers (a vector of ``size``, or one number for ``neuron``)."""
    arr, message = _as_array(value, what)
    if arr is None:
        return None, message
    want = () if neuron is not None else (size,)
    if arr.shape != want and not (neuron is not None and arr.size == 1):
        return None, (f"{what} must be one number for neuron {neuron}" if neuron is not None
                      else f"{what} must hold one number per neuron ({size}), got shape "
                           f"{arr.shape}")
    return arr.reshape(want), ""


def _match(got: np.ndarray, want: torch.Tensor, neuron: int | None) -> bool:
    ref = want.numpy() if neuron is None else want.numpy()[neuron]
    return bool(np.allclose(got, ref, rtol=1e-4, atol=1e-4))


def check_neq(delta: Any, velocity: Any, neuron: int | None = None, *,
              mu: float = NEQ_MU, quiet: bool = False) -> CheckResult:
    """Lab 04: NEq by hand on ``NEQ_OUTPUTS``, the outputs of 3 neurons before training and
    after epochs 1 and 2. ``delta`` and ``velocity`` after epoch 2, one number per neuron
    (list, numpy, torch) or, with ``neuron=i``, neuron i's numbers (float or int).
    A slip gets a message naming it; never raises."""
    result = _check_neq(delta, velocity, neuron, mu)
    if not quiet:
        print(result)
    return result


def _check_neq(delta: Any, velocity: Any, neuron: int | None, mu: float) -> CheckResult:
    if delta is None or delta is ... or velocity is None or velocity is ...:
        return CheckResult(None, "fill in delta and velocity after epoch 2, then run this "
                                 "cell again")
    size = len(NEQ_OUTPUTS[0])
    if neuron is not None and (isinstance(neuron, bool) or not isinstance(neuron, int)
                               or not 0 <= neuron < size):
        return CheckResult(False, f"neuron must be an index in 0..{size - 1}, got {neuron!r}")
    (_, d2), (_, v2) = _neq(NEQ_OUTPUTS, mu)
    which = "" if neuron is None else f" of neuron {neuron}"
    got_d, message = _numbers(delta, "delta", size, neuron)
    if got_d is None:
        return CheckResult(False, message)
    deltas, speeds = _slips(mu)
    if not _match(got_d, d2, neuron):
        hint = next((m for vals, m in deltas if _match(got_d, vals, neuron)),
                    "delta = 1 - cos(y_after_epoch_1, y_after_epoch_2), per neuron (row)")
        return CheckResult(False, f"delta{which} is not right: {hint}")
    got_v, message = _numbers(velocity, "velocity", size, neuron)
    if got_v is None:
        return CheckResult(False, f"delta is right; {message}")
    if not _match(got_v, v2, neuron):
        hint = next((m for vals, m in speeds if _match(got_v, vals, neuron)),
                    "v_1 = mu * 0 - (0 - delta_1), then v_2 = mu * v_1 - (delta_1 - delta_2)")
        return CheckResult(False, f"delta is right, velocity{which} is not: {hint}")
    frozen = [i for i in range(size) if abs(float(v2[i])) < 1e-3]
    if neuron is None:
        verdict = f"at equilibrium (|v| < 1e-3): neurons {frozen}"
    else:
        verdict = f"neuron {neuron} is {'' if neuron in frozen else 'not '}at equilibrium"
    return CheckResult(True, f"delta{which} = {_fmt(d2, neuron)}, velocity{which} = "
                             f"{_fmt(v2, neuron)}; {verdict}")


def _fmt(values: torch.Tensor, neuron: int | None) -> str:
    if neuron is not None:
        return f"{float(values[neuron]):.3g}"
    return "[" + ", ".join(f"{float(x):.3g}" for x in values) + "]"
