"""The lean engine's compiled ops (csrc/lean_ops.cpp) against stock PyTorch and against the
Python ops they stand in for: the same outputs and gradients as stock (bit for bit), the
same kept bytes and the same measured memory as the Python ops, the estimate's bytes.

Where CI is set the compiled ops must be built (``make setup`` builds them); elsewhere the
tests that need them skip, saying how to build them.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import odtkit as odt
from odtkit.engine import _layers, native

sys.path.insert(0, str(Path(__file__).resolve().parent))
import archs  # noqa: E402
from _native import native_or_skip  # noqa: E402


@contextlib.contextmanager
def _ops(which: str):
    """Run the lean layers on the "python" or "native" ops inside the block."""
    if which == "native":
        native_or_skip()
    before = _layers.use_ops(which)
    try:
        yield
    finally:
        _layers.use_ops(before)


def _step(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list, torch.Tensor | None]:
    """Output, parameter gradients and input gradient of one cross-entropy step (the same
    random draws each time, for dropout)."""
    torch.manual_seed(0)
    x = x.clone().requires_grad_(x.is_floating_point())
    out = model(x)
    F.cross_entropy(out, torch.arange(out.shape[0]) % out.shape[1]).backward()
    grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    return out.detach(), grads, x.grad


NETS = ["resnet18", "mobilenet_v2", "mobilenet_v3", "efficientnet"]


@pytest.mark.parametrize("name", NETS)
@pytest.mark.parametrize("scheme", ["bias-only", "last:2", "full"])
def test_compiled_ops_give_stocks_outputs_and_gradients(name: str, scheme: str) -> None:
    """Bit for bit: the lean model on the compiled ops, the lean model on the Python ops and
    the stock model (frozen BN statistics) give the same output, parameter gradients and
    input gradient."""
    model, x = archs.build(name), archs.example(name, 2)
    plan = odt.plan(model, scheme)
    stock = plan.apply_(copy.deepcopy(model))
    plan.norm_mode_(stock)
    want = _step(stock, x)
    for which in ("native", "python"):
        with _ops(which):
            lean = odt.lean(model, plan)
            got = _step(lean, x)
        assert torch.equal(got[0], want[0]), which
        assert len(got[1]) == len(want[1]) > 0
        for g, w in zip(got[1], want[1], strict=True):
            assert torch.allclose(g, w, rtol=1e-5, atol=1e-6), which  # bias sums: order
        assert torch.equal(got[2], want[2]), which


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_both_op_sets_keep_and_allocate_the_same_and_the_estimate_predicts_it(name: str) -> None:
    """odt.measure on the lean model, compiled ops against Python ops: the same bytes in
    every category and the same tensor peak; and the lean estimate equals them."""
    model, x = archs.build(name), archs.example(name, 4)
    plan = odt.plan(model, "bias-only")
    reports = {}
    for which in ("native", "python"):
        with _ops(which):
            reports[which] = odt.measure(model, x, plan, engine="lean", rss=False)
    est = odt.estimate(model, x, plan, engine="lean")
    assert reports["native"].by_category == reports["python"].by_category == est.by_category
    assert reports["native"].peak_bytes == reports["python"].peak_bytes
    assert est.peak_bytes == reports["native"].peak_bytes


def _clamp_case(lo: float, hi: float | None, dtype: torch.dtype, values: list[float],
                inplace: bool) -> None:
    x = torch.tensor(values, dtype=dtype)
    stock_mod = nn.ReLU(inplace) if hi is None else nn.Hardtanh(lo, hi, inplace)
    xs = x.clone().requires_grad_()
    ys = stock_mod(xs * 1)
    g = torch.randn(x.shape, generator=torch.Generator().manual_seed(len(values))).to(dtype)
    ys.backward(g)
    results = []
    for which in ("native", "python"):
        with _ops(which):
            lean_mod = odt.lean(stock_mod, "none")
            xl = x.clone().requires_grad_()
            yl = lean_mod(xl * 1)
            yl.backward(g)
        assert torch.equal(yl, ys), which
        results.append(xl.grad)
    # the same bits in both; torch's own gradient wherever no NaN is involved
    assert torch.equal(results[0], results[1])
    finite = ~torch.isnan(x)
    assert torch.equal(results[0][finite], xs.grad[finite])


@settings(max_examples=30, deadline=None)
@given(values=st.lists(st.floats(-8, 8, width=32) | st.sampled_from([0.0, -0.0, 6.0, -1.0, 1.0]),
                       min_size=1, max_size=70),
       act=st.sampled_from([(0.0, None), (0.0, 6.0), (-1.0, 1.0), (-0.3, 0.7)]),
       dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16, torch.float16]),
       inplace=st.booleans())
def test_clamp_masks_pass_what_torch_passes_in_every_float_dtype(values, act, dtype, inplace):
    """Any length (the 8-element words and their tail), the clamp's edges, four dtypes (the
    edges compared as the dtype rounds them), in place or not: torch's gradient."""
    _clamp_case(*act, dtype, values, inplace)


def test_a_nan_input_is_treated_as_in_torchs_vector_body() -> None:
    """A NaN input: ReLU passes its gradient (threshold_backward), Hardtanh blocks it (the
    vectorized body of hardtanh_backward), in both op sets."""
    values = [math.nan] + [0.5] * 20
    for lo, hi, passes in ((0.0, None, True), (0.0, 6.0, False)):
        for which in ("native", "python"):
            with _ops(which):
                mod = odt.lean(nn.ReLU() if hi is None else nn.Hardtanh(lo, hi), "none")
                x = torch.tensor(values, requires_grad=True)
                mod(x * 1).backward(torch.full((21,), 2.0))
            assert (x.grad[0].item() == 2.0) is passes, (which, lo, hi)


def test_strided_and_channels_last_inputs() -> None:
    """A channels-last input and a transposed view through a conv-BN-ReLU6: stock's output
    and input gradient (for channels last within rounding: a frozen conv's input gradient
    is a transposed convolution, which sums in another order there than
    convolution_backward), and the two op sets bit for bit alike."""
    conv = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU6())
    conv.eval()
    plan = odt.plan(conv, "bias-only")
    stock = plan.apply_(copy.deepcopy(conv))
    base = torch.randn(2, 3, 9, 7)
    for x, exact in ((base.to(memory_format=torch.channels_last), False),
                     (base.transpose(2, 3), True)):
        want = _step(nn.Sequential(stock, nn.Flatten()), x)
        got = {}
        for which in ("native", "python"):
            with _ops(which):
                got[which] = _step(nn.Sequential(odt.lean(conv, plan), nn.Flatten()), x)
            out, _, gx = got[which]
            assert torch.equal(out, want[0]), which
            assert torch.equal(gx, want[2]) if exact else torch.allclose(gx, want[2], rtol=1e-5,
                                                                          atol=1e-8), which
        assert torch.equal(got["native"][2], got["python"][2])


@pytest.mark.parametrize("layer, shape", [
    (nn.Conv1d(4, 6, 3, stride=2, padding=1), (2, 4, 11)),
    (nn.Conv3d(3, 4, 3, padding=1, groups=1), (1, 3, 5, 6, 4)),
    (nn.Conv2d(6, 6, 3, stride=2, padding=1, groups=3, bias=False), (2, 6, 9, 9)),
    (nn.Linear(5, 3), (4, 2, 5)),
    (nn.Linear(5, 3, bias=False), (4, 5)),
    (nn.MaxPool2d(3, 2, 1), (2, 3, 9, 8)),
    (nn.MaxPool2d(2, 2, 0, ceil_mode=True), (1, 2, 7, 5)),
    (nn.BatchNorm1d(5, affine=False), (4, 5)),
])
@pytest.mark.parametrize("train_weight", [False, True])
def test_each_compiled_layer_equals_stock(layer: nn.Module, shape: tuple, train_weight: bool):
    """Each compiled op on its own, with its weight frozen or trained, with and without a
    bias: stock's output, input gradient and parameter gradients."""
    layer = copy.deepcopy(layer).eval()  # the parametrized instance is shared between cases
    x = torch.randn(shape)
    for p in layer.parameters():
        p.requires_grad_(train_weight or p.dim() == 1)
    xs = x.clone().requires_grad_()
    ys = layer(xs)
    g = torch.randn_like(ys)
    ys.backward(g)
    want = [p.grad.clone() for p in layer.parameters() if p.grad is not None]
    for which in ("native", "python"):
        with _ops(which):
            lean = odt.lean(layer, odt.plan(layer, "full" if train_weight else "bias-only"))
            for p, q in zip(lean.parameters(), layer.parameters(), strict=True):
                p.requires_grad_(q.requires_grad)
                p.grad = None  # the copy took the stock step's gradients along
            xl = x.clone().requires_grad_()
            yl = lean(xl)
            yl.backward(g)
        assert torch.equal(yl, ys) and torch.equal(xl.grad, xs.grad), which
        got = [p.grad for p in lean.parameters() if p.grad is not None]
        assert len(got) == len(want)
        for a, b in zip(got, want, strict=True):
            assert torch.allclose(a, b, rtol=1e-5, atol=1e-6), which


def test_odtkit_native_mode_is_checked(monkeypatch) -> None:
    monkeypatch.setenv("ODTKIT_NATIVE", "yes")
    with pytest.raises(ValueError, match="ODTKIT_NATIVE='yes'.*'auto'.*'1'.*'0'"):
        native.mode()
    monkeypatch.setenv("ODTKIT_NATIVE", "0")
    assert native.mode() == "0" and native.available() is False


def test_use_ops_names_a_bad_choice() -> None:
    with pytest.raises(ValueError, match="'fast'.*'python' or 'native'"):
        _layers.use_ops("fast")


def test_the_compiled_ops_are_in_use_where_built() -> None:
    """After odt.lean, a built extension is what the layers call (``make setup`` builds it;
    under CI it must be there)."""
    native_or_skip()
    odt.lean(nn.ReLU(), "none")
    assert _layers.backend == "native"
    assert native.library().exists()


def test_a_failed_build_is_remembered_and_tried_again_on_request(tmp_path) -> None:
    """A compiler that fails (CXX=false): the first process tries, warns and runs the Python
    ops; the next one does not try again but warns the same; ``odtkit native`` tries again
    and exits 1 naming the failure."""
    import shutil
    import subprocess

    if shutil.which("ninja") is None and not (Path(sys.executable).parent / "ninja").exists():
        pytest.skip("ninja is not installed (the native extra brings it)")
    env = dict(os.environ, ODTKIT_CACHE=str(tmp_path), CXX="false", ODTKIT_NATIVE="auto")
    probe = ("import warnings\nfrom odtkit.engine import native\n"
             "with warnings.catch_warnings(record=True) as caught:\n"
             "    warnings.simplefilter('always')\n"
             "    print(native.available(build_missing=True))\n"
             "print(' | '.join(str(w.message) for w in caught))\n")

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True,
                              timeout=300)

    first = run("-c", probe)
    assert first.stdout.splitlines()[0] == "False", first.stderr
    assert "compiling odtkit's ops" in first.stderr
    assert "failed" in first.stdout and "odtkit native" in first.stdout
    assert "Python ops" in first.stdout
    marks = list(tmp_path.glob("native/*/FAILED"))
    assert len(marks) == 1
    second = run("-c", probe)
    assert second.stdout.splitlines()[0] == "False"
    assert "compiling" not in second.stderr  # remembered, not tried again
    assert "failed" in second.stdout and "Python ops" in second.stdout
    again = run("-c", "from odtkit.cli import main; raise SystemExit(main(['native']))")
    assert again.returncode == 1
    assert "compiling odtkit's ops" in again.stderr and "failed" in again.stderr
