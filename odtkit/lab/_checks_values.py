"""Exercise checks whose answer is a real number or two (labs 02 and 04), with tolerance."""

from __future__ import annotations

from typing import Any

import torch

from ._checks_core import CheckResult, check_number, read_number, say

__all__ = ["check_qparams", "check_velocity_step"]


def check_qparams(scale: Any, zero_point: Any, x_min: float = -1.3, x_max: float = 2.7,
                  bits: int = 8, quiet: bool = False) -> CheckResult:
    """Lab 02: the asymmetric scale and zero point of [x_min, x_max] on the signed
    ``bits``-bit grid, as ``odt.quant.quantize`` calibrates them. Recognized slips: 2**bits
    levels instead of 2**bits - 1 steps, 1 / scale, the unsigned range's zero point, the
    flipped sign, an unrounded zero point."""
    from ..quant import quantize

    q = quantize(torch.tensor([float(x_min), float(x_max)]), bits, symmetric=False)
    right_scale, right_zero = float(q.scale), int(q.zero_point)
    steps = 2**bits - 1
    qmin = -(2 ** (bits - 1))
    s_result = check_number(
        scale, right_scale, rel=1e-4, unit="", todo="fill in scale and zero_point, then run "
                                                     "this cell again.",
        slips=[((x_max - x_min) / 2**bits, f"that divides by 2**{bits} = {2**bits}; "
                                           f"{2**bits} levels have {steps} steps between "
                                           f"them: scale = (x_max - x_min) / {steps}."),
               (1 / right_scale, "that is 1 / scale; the scale is the step size, "
                                 "(x_max - x_min) / (2**bits - 1)."),
               (x_max / (2 ** (bits - 1) - 1), "that is the symmetric scale (max |x| / "
                                               "qmax); asymmetric uses the whole range.")],
        default_hint=f"scale = (x_max - x_min) / (2**bits - 1) = ({x_max} - {x_min}) / {steps}.")
    if s_result.ok is None:
        return say(s_result, quiet)
    if not s_result.ok:
        return say(CheckResult(False, f"scale: {s_result.message}"), quiet)
    unrounded = qmin - x_min / right_scale
    z_result = check_number(
        zero_point, right_zero, unit="", todo="fill in zero_point, then run this cell again.",
        slips=[(-right_zero, "the sign is flipped: zero_point = qmin - round(x_min / scale)."),
               (right_zero - qmin, f"that is the zero point of the unsigned range [0, {steps}]; "
                                   f"this grid is signed, [{qmin}, {-qmin - 1}]: add qmin."),
               (round(-x_min / right_scale), "you forgot qmin: zero_point = qmin - "
                                             "round(x_min / scale).")],
        default_hint=f"zero_point = qmin - round(x_min / scale), with qmin = {qmin}.")
    got, _ = read_number(zero_point)
    if got is not None and not z_result.ok and abs(got - unrounded) < 1e-3 \
            and got != round(got):
        z_result = CheckResult(False, f"{got:.6g} is not it: round it; the zero point is an "
                                      "integer so that the real 0 is exactly on the grid.")
    if not z_result.ok:
        return say(CheckResult(z_result.ok, f"scale is right; zero_point: {z_result.message}"),
                   quiet)
    return say(CheckResult(True, f"scale = {right_scale:.6g}, zero_point = {right_zero}: "
                                 f"x = {x_min} maps to {qmin}, x = {x_max} to {-qmin - 1}, and "
                                 f"0.0 to {right_zero} exactly."), quiet)


def check_velocity_step(answer: Any, v_prev: float = 0.2, delta_prev: float = 0.1,
                        delta: float = 0.4, mu: float = 0.5,
                        quiet: bool = False) -> CheckResult:
    """Lab 04: one NEq velocity update for one neuron, checked against
    ``odt.sparse.Velocity``'s recursion v = mu * v_prev - (delta_prev - delta). Recognized
    slips: the flipped sign, no momentum, mu on everything, the change alone with the wrong
    sign, |v|, another mu."""
    right = mu * v_prev - (delta_prev - delta)
    slips = [
        (-right, "the sign is flipped: v = mu * v_prev - (delta_prev - delta)."),
        (delta - delta_prev, "no momentum: add mu * v_prev."),
        (mu * (v_prev - (delta_prev - delta)), "mu multiplies only the previous velocity."),
        (mu * v_prev + (delta_prev - delta), "the change of delta has the wrong sign: "
                                             "v = mu * v_prev - (delta_prev - delta)."),
        (abs(right), "that is |v|; the velocity keeps its sign (equilibrium is |v| < eps)."),
        (v_prev - (delta_prev - delta), f"that uses mu = 1; here mu = {mu}."),
        (0.9 * v_prev - (delta_prev - delta), f"that uses mu = 0.9; here mu = {mu}."),
    ]
    state = ("|v| < 1e-3: at equilibrium, NEq stops updating it" if abs(right) < 1e-3 else
             "|v| >= 1e-3: not at equilibrium, NEq keeps updating it")
    result = check_number(answer, right, slips=slips, unit="", rel=1e-6,
                          right_message=f"v = {mu} x {v_prev} - ({delta_prev} - {delta}) = "
                                        f"{right:.6g}; {state}.",
                          default_hint="v = mu * v_prev - (delta_prev - delta).",
                          todo="set v to the neuron's new velocity, a number.")
    return say(result, quiet)
