"""Lab 02's exercise check: right answers in any numeric type pass, and each common slip
in an asymmetric quantizer gets the message that names it.

The right answers here are written from the textbook formulas and from PyTorch's own
``torch.fake_quantize_per_tensor_affine`` (an independent reference), not from odtkit.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import odtkit as odt


def _params(bits, lo, hi, levels=None, qmin=None):
    levels = 2**bits - 1 if levels is None else levels
    qmin = -(2 ** (bits - 1)) if qmin is None else qmin
    scale = (hi - lo) / levels
    return scale, qmin - round(lo / scale), qmin, qmin + levels


def right_torch(x, bits, lo, hi):
    scale, z, qmin, qmax = _params(bits, lo, hi)
    return torch.clamp(torch.round(x / scale) + z, qmin, qmax).to(torch.int8), scale, z


def right_numpy_lists(x, bits, lo, hi):
    scale, z, qmin, qmax = _params(bits, lo, hi)
    q = np.clip(np.round(x.numpy() / scale) + z, qmin, qmax)
    return q.tolist(), np.float32(scale), np.int64(z)


def right_numpy_int16(x, bits, lo, hi):
    scale, z, qmin, qmax = _params(bits, lo, hi)
    q = np.clip(np.rint(x.numpy().astype(np.float64) / scale) + z, qmin, qmax)
    return q.astype(np.int16), torch.tensor(scale), torch.tensor(z, dtype=torch.int32)


def right_half_up_float(x, bits, lo, hi):
    """floor(v + 0.5): rounds ties up, differs from half-to-even only on exact ties."""
    scale, z, qmin, qmax = _params(bits, lo, hi)
    return torch.clamp(torch.floor(x.double() / scale + 0.5) + z, qmin, qmax), scale, float(z)


def right_pytorch_fake_quant(x, bits, lo, hi):
    scale, z, qmin, qmax = _params(bits, lo, hi)
    fq = torch.fake_quantize_per_tensor_affine(x, scale, z, qmin, qmax)
    return torch.round(fq / scale + z).to(torch.int32), scale, z


@pytest.mark.parametrize("fn", [right_torch, right_numpy_lists, right_numpy_int16,
                                right_half_up_float, right_pytorch_fake_quant])
def test_right_answers_pass_in_any_numeric_type(fn, capsys):
    result = odt.lab.check_quantize(fn)
    assert result.ok is True and bool(result)
    assert capsys.readouterr().out.startswith("Correct:")


def wrong(rnd=torch.round, levels_minus=0, levels_plus=0, qmin_of=None, zero="add",
          clip=True, cast=None, fixed_bits=None):
    def fn(x, bits, lo, hi):
        b = fixed_bits or bits
        levels = 2**b - 1 - levels_minus + levels_plus
        qmin = -(2 ** (b - 1)) if qmin_of is None else qmin_of(b)
        scale = (hi - lo) / levels
        z = qmin - round(lo / scale) if zero != "unsigned" else -round(lo / scale)
        y = rnd(x / scale)
        y = y if zero == "none" else (y - z if zero == "subtract" else y + z)
        if clip:
            y = torch.clamp(y, qmin, qmin + levels)
        return (y.to(cast) if cast else y), scale, z
    return fn


def narrow_clip_only(x, bits, lo, hi):
    scale, z, qmin, qmax = _params(bits, lo, hi)
    return torch.clamp(torch.round(x / scale) + z, qmin + 1, qmax), scale, z


WRONG = {
    "floor": (wrong(rnd=torch.floor), "rounded down (floor)"),
    "truncation by a cast": (wrong(rnd=lambda v: v, cast=torch.int32), "truncated toward zero"),
    "trunc": (wrong(rnd=torch.trunc), "truncated toward zero"),
    "ceil": (wrong(rnd=torch.ceil), "rounded up (ceil)"),
    "no zero point": (wrong(zero="none"), "forgot the zero point"),
    "zero point subtracted": (wrong(zero="subtract"), "zero point has the wrong sign"),
    "unsigned [0, 255]": (wrong(qmin_of=lambda b: 0, zero="unsigned"),
                          "unsigned range [0, 255]"),
    "narrow [-127, 127]": (wrong(levels_minus=1, qmin_of=lambda b: -(2 ** (b - 1)) + 1),
                           "narrow range [-127, 127]"),
    "clipped at [-127, 127]": (narrow_clip_only, "clipped at [-127, 127]"),
    "no clipping": (wrong(clip=False), "did not clip"),
    "no clipping, int8 cast wraps": (wrong(clip=False, cast=torch.int8), "wrapped"),
    "scale over 2^b": (wrong(levels_plus=1), "off by one level"),
    "8 bits hard-coded": (wrong(fixed_bits=8), "that is the 8-bit answer, but bits=4"),
}


@pytest.mark.parametrize("name", list(WRONG))
def test_each_common_slip_gets_its_own_message(name):
    fn, says = WRONG[name]
    result = odt.lab.check_quantize(fn, quiet=True)
    assert result.ok is False and not result
    assert says in result.message, result.message


def test_messages_are_distinct_and_name_the_case():
    messages = {name: odt.lab.check_quantize(fn, quiet=True).message
                for name, (fn, _) in WRONG.items() if name != "truncation by a cast"}
    assert len(set(messages.values())) == len(messages)
    assert all(m.startswith("quantize(x, bits=") for m in messages.values())


def test_dequantized_answer_and_bad_qparams():
    def dequantized(x, bits, lo, hi):
        q, scale, z = right_torch(x, bits, lo, hi)
        return (q.float() - z) * scale, scale, z

    def inverse_scale(x, bits, lo, hi):
        q, scale, z = right_torch(x, bits, lo, hi)
        return q, 1 / scale, z

    def float_zero_point(x, bits, lo, hi):
        q, scale, z = right_torch(x, bits, lo, hi)
        return q, scale, qmin_float(bits) - lo / scale

    def qmin_float(bits):
        return -(2.0 ** (bits - 1))

    def flipped_zero_point(x, bits, lo, hi):
        q, scale, z = right_torch(x, bits, lo, hi)
        return q, scale, -z

    for fn, says in [(dequantized, "dequantized values"), (inverse_scale, "1 / scale"),
                     (float_zero_point, "not an integer"), (flipped_zero_point, "flipped")]:
        result = odt.lab.check_quantize(fn, quiet=True)
        assert result.ok is False and says in result.message, result.message


def test_shapes_types_and_errors_are_explained_not_raised():
    cases = [
        (lambda x, b, lo, hi: right_torch(x, b, lo, hi)[0], "return three things"),
        (lambda x, b, lo, hi: (x[:3], 1.0, 0), "shape of x"),
        (lambda x, b, lo, hi: ("abc", 1.0, 0), "must be numbers"),
        (lambda x, b, lo, hi: 1 / 0, "failed: ZeroDivisionError"),
        (lambda x, b, lo, hi: (torch.full_like(x, float("nan")), 1.0, 0), "nan or inf"),
        (lambda x, b, lo, hi: (right_torch(x, b, lo, hi)[0], [1.0, 2.0], 0), "one number"),
    ]
    for fn, says in cases:
        result = odt.lab.check_quantize(fn, quiet=True)
        assert result.ok is False and says in result.message, result.message
    assert odt.lab.check_quantize(42, quiet=True).ok is False


def test_missing_answer_is_not_done_yet(capsys):
    def todo(x, bits, x_min, x_max):
        raise NotImplementedError

    for fn in (None, todo):
        result = odt.lab.check_quantize(fn)
        assert result.ok is None and not result
    assert capsys.readouterr().out.count("Not done yet") == 2



# --- section 4's precision table ---------------------------------------------------------

def _small():
    from torch import nn
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 3))


class _Twice(torch.nn.Module):
    """One Linear applied twice (a shared weight)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.flat, self.fc = torch.nn.Flatten(), torch.nn.Linear(64, 64)

    def forward(self, x):
        return self.fc(torch.relu(self.fc(self.flat(x))))[:, :3]


def test_step_memory_prefers_estimate_then_measure_then_refuses():
    x = torch.zeros(1, 1, 8, 8)
    for precision, how in (("fp32", "estimate"), ("fp16", "estimate"), ("bf16", "estimate")):
        model = _small()
        plan = odt.plan(model, "full", precision=precision)
        report, got, reason = odt.lab.step_memory(model, x, plan)
        assert (got, reason) == (how, "")
        expected = (odt.estimate if how == "estimate" else odt.measure)(model, x, plan, optimizer="sgd-m")
        assert report.peak_bytes == expected.peak_bytes
    # a trained weight used twice under autocast: the estimate refuses it, measure counts it
    twice = _Twice()
    plan = odt.plan(twice, "full", precision="fp16")
    with pytest.raises(ValueError):
        odt.estimate(twice, x, plan, optimizer="sgd-m")
    report, got, reason = odt.lab.step_memory(twice, x, plan)
    assert (got, reason) == ("measure", "")
    assert report.peak_bytes == odt.measure(twice, x, plan, optimizer="sgd-m").peak_bytes
    model = _small()
    plan = odt.plan(model, "full", precision="fp8-e4m3")
    try:
        odt.measure(model, x, plan)
    except ValueError as err:
        report, how, reason = odt.lab.step_memory(model, x, plan)
        assert report is None and how == "refused" and str(err) in reason
    else:  # fp8 memory landed: the row takes it, the table shows a number
        assert odt.lab.step_memory(model, x, plan)[1] in ("estimate", "measure")


def test_precision_row_times_and_cells_come_from_device_fit():
    x = torch.zeros(1, 1, 8, 8)
    model = _small()
    row = odt.lab.precision_row("fp32", model, x, odt.plan(model, "full"), accuracy=0.5)
    report = odt.estimate(model, x, odt.plan(model, "full"), optimizer="sgd-m")
    assert row.memory_bytes == report.peak_bytes and row.memory_how == "estimate"
    for name in ("stm32f746", "raspberry-pi-4"):
        fit = odt.device(name).fit(report)
        assert row.step_s[name] == fit.step_time_s is not None
        assert row.cells[name] == odt.units.format_seconds(fit.step_time_s)

    half = odt.lab.precision_row("fp16", model, x, odt.plan(model, "full", precision="fp16"),
                                 accuracy=0.5)
    assert half.memory_how == "estimate"
    for name in ("stm32f746", "raspberry-pi-4"):  # neither has fp16 arithmetic
        assert half.step_s[name] is None and half.cells[name].startswith("no fp16 peak")
        assert any("no fp16 peak" in n for n in half.notes[name])


def test_table_shows_a_dash_and_the_reason_for_a_refused_memory():
    rows = [odt.lab.PrecisionRow("fp32", "fp32", 0.546, 1024, "estimate",
                                 step_s={"stm32f746": 1e-3}, cells={"stm32f746": "1 ms"}),
            odt.lab.PrecisionRow("fp8-e4m3", "fp8-e4m3", 0.539, None, "refused", "measure: not yet",
                                 step_s={"stm32f746": None}, cells={"stm32f746": "no fp16 peak"},
                                 notes={"stm32f746": ("step time unknown: no fp16 peak",)})]
    text = odt.lab.format_precision_table(rows)
    lines = text.splitlines()
    assert "peak memory (how)" in lines[0] and "stm32f746 step" in lines[0]
    assert "54.6%" in lines[1] and "1 KiB (estimate)" in lines[1] and "1 ms" in lines[1]
    assert "—" in lines[2] and "no fp16 peak" in lines[2] and "KiB" not in lines[2]
    assert "— fp8-e4m3: memory refused by measure: not yet" in lines
    assert "stm32f746 (fp8-e4m3): step time unknown: no fp16 peak" in lines
    with pytest.raises(ValueError, match="empty"):
        odt.lab.format_precision_table([])
