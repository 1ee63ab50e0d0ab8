"""Lab 02's exercise check: a student's asymmetric ``quantize`` against odt.quant.quantize.

The exercise: ``fn(x, bits, x_min, x_max) -> (q, scale, zero_point)``, the integers of
``x`` on the asymmetric grid calibrated on the range [x_min, x_max] (which holds 0), with
the signed full range [-2^(b-1), 2^(b-1) - 1] (TFLite's activations, odt.quant's
``symmetric=False``). Values of ``x`` outside the calibrated range clip to the ends.

The reference is ``odt.quant.quantize``. A wrong answer is compared with the answers of
the common slips (floor or truncation instead of rounding, no zero point, the wrong
clipping range, one level too many in the scale, 8 bits hard-coded) and the message names
the slip it matches. Any numeric type is accepted: numpy arrays, torch tensors of any
integer or float dtype, Python lists and scalars.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ._checks_core import CheckResult

__all__ = ["check_quantize", "QUANTIZE_CASES"]

# (bits, x_min, x_max): an off-centre range, 4 bits, and a ReLU6-like range starting at 0
QUANTIZE_CASES = ((8, -2.0, 3.0), (4, -0.5, 1.5), (8, 0.0, 6.0))
_TIE = 1e-4  # |x / scale - k - 0.5| below this: float32 and float64 may round either way


def _inputs(x_min: float, x_max: float, seed: int) -> torch.Tensor:
    """float32 values that spread over and beyond [x_min, x_max] (so clipping matters)."""
    gen = torch.Generator().manual_seed(seed)
    span = x_max - x_min
    return (torch.rand(256, generator=gen, dtype=torch.float64) * 1.4 * span
            + x_min - 0.2 * span).float()


def _reference(x: torch.Tensor, bits: int, x_min: float, x_max: float):
    from .. import quant

    calibration = quant.quantize(torch.tensor([x_min, x_max]), bits, symmetric=False)
    q = quant.quantize(x, bits, symmetric=False, scale=calibration.scale,
                       zero_point=calibration.zero_point)
    return q.values.double(), float(q.scale), int(q.zero_point)


def _slip(x: torch.Tensor, bits: int, lo: float, hi: float, *, levels: int | None = None,
          qmin: int | None = None, qmax: int | None = None, rnd: Callable = torch.round,
          zero: str = "add", clip: str = "clamp", rnd_zero: bool = False, late: bool = False,
          clip_range: tuple[int, int] | None = None) -> torch.Tensor:
    """Quantized integers computed with one slip (float64, by the textbook formulas).

    ``rnd_zero``: the zero point is rounded with ``rnd`` too (a student who floors
    everything); ``late``: ``rnd`` after adding the zero point (a cast at the end);
    ``clip``: "clamp", "none" or "wrap" (no clamp, then a cast that wraps);
    ``clip_range``: clamp there instead of [qmin, qmax]."""
    levels = 2**bits - 1 if levels is None else levels
    qmin = -(2 ** (bits - 1)) if qmin is None else qmin
    qmax = qmin + levels if qmax is None else qmax
    scale = (hi - lo) / levels
    offset = float((rnd if rnd_zero else torch.round)(torch.tensor(lo / scale,
                                                                   dtype=torch.float64)))
    z = -offset if zero == "unsigned" else qmin - offset
    y = x.double() / scale
    if late:
        y = rnd(y + z)
    else:
        y = rnd(y)
        y = {"add": y + z, "unsigned": y + z, "none": y, "subtract": y - z}[zero]
    if clip == "wrap":
        return torch.remainder(y - qmin, 2**bits) + qmin
    low, high = (qmin, qmax) if clip_range is None else clip_range
    return torch.clamp(y, low, high) if clip == "clamp" else y


def _slips(x: torch.Tensor, bits: int, lo: float, hi: float) -> list[tuple[torch.Tensor, str]]:
    """(integers, what went wrong) for each common slip, most specific first."""
    top = 2**bits - 1
    half = 2 ** (bits - 1)
    rounding = [
        (torch.floor, "you rounded down (floor); quantization rounds to the nearest integer "
         "(torch.round / np.round), which halves the worst-case error to scale / 2"),
        (torch.trunc, "you truncated toward zero (int(), .astype(int) or a cast to an "
         "integer dtype drops the fraction); round to the nearest integer first "
         "(torch.round / np.round), then cast"),
        (torch.ceil, "you rounded up (ceil); round to the nearest integer (torch.round)"),
    ]
    msgs = [(dict(rnd=f, rnd_zero=both, late=late), msg) for f, msg in rounding
            for both, late in ((False, False), (True, False), (False, True))]
    msgs += [
        (dict(zero="none"), "you forgot the zero point: q = round(x / scale) + zero_point, "
         "so that x_min lands on qmin and 0 on an exact integer"),
        (dict(zero="subtract"), "the zero point has the wrong sign: add it, "
         "q = round(x / scale) + zero_point with zero_point = qmin - round(x_min / scale)"),
        (dict(qmin=0, qmax=top, zero="unsigned"), f"you used the unsigned range [0, {top}]; "
         f"odt.quant's asymmetric {bits}-bit integers are signed: [{-half}, {half - 1}], "
         f"with zero_point = {-half} - round(x_min / scale)"),
        (dict(levels=top - 1, qmin=-(half - 1)), f"you used the narrow range "
         f"[{-(half - 1)}, {half - 1}] ({top - 1} steps): that is the symmetric weights' "
         f"range; the asymmetric one is the full [{-half}, {half - 1}], {top} steps"),
        (dict(clip_range=(-(half - 1), half - 1)), f"you clipped at [{-(half - 1)}, "
         f"{half - 1}]; the asymmetric range is the full [{-half}, {half - 1}]"),
        (dict(clip="wrap"), f"you did not clip, and the cast to an integer dtype wrapped "
         f"the values beyond the range around (e.g. {half} became {-half}); clamp q to "
         f"[{-half}, {half - 1}] before casting"),
        (dict(clip="none"), f"you did not clip: values of x outside [x_min, x_max] give "
         f"integers outside [{-half}, {half - 1}], which an int{bits} cannot hold; clamp "
         f"q to [{-half}, {half - 1}]"),
        (dict(levels=top + 1), f"the scale is off by one level: {bits} bits give {top + 1} "
         f"integers but {top} steps between them, so scale = (x_max - x_min) / (2**bits - 1)"
         f" = (x_max - x_min) / {top}, not / {top + 1}"),
    ]
    out = [(_slip(x, bits, lo, hi, **kw), msg) for kw, msg in msgs]
    if bits != 8:
        eight = _slip(x, 8, lo, hi)
        out.append((eight, f"that is the 8-bit answer, but bits={bits}: derive qmin = "
                           f"-2**(bits-1), qmax = 2**(bits-1) - 1 and the 2**bits - 1 steps "
                           "from bits instead of writing -128, 127 and 255"))
    return out


def _as_array(value: Any, what: str) -> tuple[np.ndarray | None, str]:
    """``value`` (tensor, array, list, scalar) as a float64 numpy array, or a message."""
    if isinstance(value, (bool, np.bool_)) or getattr(value, "dtype", None) in (torch.bool, bool):
        return None, f"{what} must be numbers, got bools ({value!r}): True and False are not values"
    try:
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu().to(torch.float64).numpy()
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as err:
        return None, f"{what} must be numbers (a tensor, an array or a list), got " \
                     f"{type(value).__name__}: {err}"
    if not np.isfinite(arr).all():
        return None, f"{what} holds nan or inf; every value must be a finite number"
    return arr, ""


def _same(q: np.ndarray, want: torch.Tensor, ties: np.ndarray) -> bool:
    """Equal, except by one at values that sit on a rounding tie."""
    diff = np.abs(q - want.numpy())
    return bool(np.all((diff == 0) | ((diff <= 1) & ties)))


def _ties(x: torch.Tensor, scale: float) -> np.ndarray:
    """Where x / scale sits (within _TIE) on a half-integer or an integer: there float32
    and float64 arithmetic, or round-half-even and round-half-up, may differ by one."""
    v = (x.double() / scale).numpy()
    frac = v - np.floor(v)
    return (np.abs(frac - 0.5) < _TIE) | (frac < _TIE) | (frac > 1 - _TIE)


def _integers(q: np.ndarray, x: torch.Tensor, bits: int, lo: float, hi: float,
              want: torch.Tensor, scale: float, zero_point: int) -> str:
    """What is wrong with the integers ``q`` ('' when they match the reference)."""
    ties = _ties(x, scale)
    if not np.all(q == np.round(q)):
        dequantized = ((want - zero_point) * scale).numpy()
        if np.allclose(q, dequantized, rtol=1e-4, atol=1e-6):
            return ("you returned the dequantized values (q - zero_point) * scale; return "
                    "the integers q themselves, with the scale and zero point beside them")
        return "q holds values that are not integers: round x / scale to the nearest integer"
    if _same(q, want, ties):
        return ""
    for slipped, message in _slips(x, bits, lo, hi):
        if _same(q, slipped, ties):
            return message
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    if q.min() < qmin or q.max() > qmax:
        return (f"q holds integers from {q.min():.0f} to {q.max():.0f}, outside the {bits}-bit "
                f"range [{qmin}, {qmax}]; clamp to it")
    bad = np.flatnonzero(q != want.numpy())
    i = int(bad[0])
    return (f"{bad.size} of {q.size} integers differ from odt.quant.quantize; e.g. "
            f"x = {float(x[i]):.5f} should give {want[i]:.0f}, you gave {q[i]:.0f}. The "
            f"recipe: scale = (x_max - x_min) / (2**bits - 1), zero_point = qmin - "
            f"round(x_min / scale), q = clamp(round(x / scale) + zero_point, qmin, qmax) "
            f"with qmin, qmax = -2**(bits-1), 2**(bits-1) - 1")


def _one_number(value: Any, what: str) -> tuple[float | None, str]:
    arr, message = _as_array(value, what)
    if arr is None:
        return None, message
    if arr.size != 1:
        return None, f"{what} must be one number (per tensor), got shape {arr.shape}"
    return float(arr.reshape(())), ""


def _qparams(scale: Any, zero_point: Any, want_scale: float, want_zero: int) -> str:
    """What is wrong with the returned scale and zero point ('' when right)."""
    s, message = _one_number(scale, "scale")
    if s is None:
        return message
    if not np.isclose(s, want_scale, rtol=1e-5, atol=0):
        if np.isclose(s, 1 / want_scale, rtol=1e-5, atol=0):
            return (f"q is right, but you returned 1 / scale = {s:.6g}; return the step "
                    f"size scale = (x_max - x_min) / (2**bits - 1) = {want_scale:.6g}")
        return (f"q is right, but scale = {s:.6g}; it should be (x_max - x_min) / "
                f"(2**bits - 1) = {want_scale:.6g}")
    z, message = _one_number(zero_point, "zero_point")
    if z is None:
        return message
    if z != round(z):
        return (f"zero_point = {z:.6g} is not an integer: round it, zero_point = qmin - "
                "round(x_min / scale), so that the real 0 is exactly an integer (zero padding "
                "needs an exact 0)")
    if int(z) != want_zero:
        sign = " (the sign is flipped)" if int(z) == -want_zero else ""
        return (f"q is right, but zero_point = {int(z)}{sign}; it should be qmin - "
                f"round(x_min / scale) = {want_zero}")
    return ""


def _diagnose(x: torch.Tensor, bits: int, lo: float, hi: float, out: Any) -> str:
    """An explanation of what is wrong with ``out`` for one case, or '' if it is right."""
    if not isinstance(out, (tuple, list)) or len(out) != 3:
        got = (f"one value shaped {tuple(np.shape(out))}" if hasattr(out, "shape")
               else f"{type(out).__name__}" + (f" of length {len(out)}"
                                               if isinstance(out, (tuple, list)) else ""))
        return f"return three things, (q, scale, zero_point); got {got}"
    q, scale, zero_point = out
    q, message = _as_array(q, "q")
    if q is None:
        return message
    if q.shape != tuple(x.shape):
        return f"q must have the shape of x, {tuple(x.shape)}; got {q.shape}"
    want, want_scale, want_zero = _reference(x, bits, lo, hi)
    return (_integers(q, x, bits, lo, hi, want, want_scale, want_zero)
            or _qparams(scale, zero_point, want_scale, want_zero))


def check_quantize(fn: Callable[..., Any] | None, *, quiet: bool = False) -> CheckResult:
    """Check ``fn(x, bits, x_min, x_max) -> (q, scale, zero_point)`` against
    ``odt.quant.quantize(x, bits, symmetric=False)`` calibrated on [x_min, x_max].

    Runs the cases of ``QUANTIZE_CASES``; a slip gets a message naming it. Never raises:
    returns a ``CheckResult`` (None while ``fn`` is missing or raises NotImplementedError)
    and prints it unless ``quiet``.
    """
    result = _check_quantize(fn)
    if not quiet:
        print(result)
    return result


def _check_quantize(fn: Callable[..., Any] | None) -> CheckResult:
    todo = CheckResult(None, "write quantize(x, bits, x_min, x_max), then run this cell again")
    if fn is None or fn is ...:
        return todo
    if not callable(fn):
        return CheckResult(False, f"pass your function itself (check_quantize(quantize)), "
                                  f"got a {type(fn).__name__}")
    for i, (bits, lo, hi) in enumerate(QUANTIZE_CASES):
        x = _inputs(lo, hi, seed=i)
        call = f"quantize(x, bits={bits}, x_min={lo}, x_max={hi})"
        try:
            out = fn(x.clone(), bits, lo, hi)
        except NotImplementedError:
            return todo
        except Exception as err:  # the student's code: report, do not crash the check
            return CheckResult(False, f"{call} failed: {type(err).__name__}: {err}")
        problem = _diagnose(x, bits, lo, hi, out)
        if problem:
            return CheckResult(False, f"{call}: {problem}")
    cases = ", ".join(f"{b} bits on [{lo}, {hi}]" for b, lo, hi in QUANTIZE_CASES)
    return CheckResult(True, f"matches odt.quant.quantize(x, bits, symmetric=False) for "
                             f"{cases}: integers, scale and zero point")
