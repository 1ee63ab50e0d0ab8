"""The lean engine beyond ReLU: max pooling, dropout, smooth activations (exact and
MobileTL), against stock PyTorch, autograd's saved-tensor hooks and hand-computed
gradients; the lean estimate against a measured lean step on the test architectures."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _saved import saved_bytes
from archs import ARCHS, example
from archs import build as build_arch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import odtkit as odt
from odtkit import engine
from odtkit.engine._masks import pack_mask, unpack_mask
from odtkit.memory import compare


def step(layer: nn.Module, x: torch.Tensor, g: torch.Tensor | None = None, seed: int = 0):
    """(output, input gradient, saved bytes) of one forward and backward of ``layer``."""
    x = x.clone().requires_grad_(True)
    inp = x * 1.0  # not a leaf: in-place layers may run on it
    torch.manual_seed(seed)
    nbytes, out = saved_bytes(layer, lambda: layer(inp))
    out.backward(torch.ones_like(out) if g is None else g)
    return out.detach(), x.grad, nbytes


POOLS = [
    lambda: nn.MaxPool2d(3, 2, 1),
    lambda: nn.MaxPool2d(2),
    lambda: nn.MaxPool2d((3, 2), (1, 2), (1, 0)),
    lambda: nn.MaxPool2d(3, 2, 1, ceil_mode=True),
    lambda: nn.MaxPool2d(5, 3, 2),
]


@pytest.mark.parametrize("make", POOLS)
@pytest.mark.parametrize("shape", [(2, 3, 9, 11), (3, 8, 7)])
def test_max_pool_gradients_bit_identical_with_byte_indices(make, shape) -> None:
    pool = make()
    lean = odt.lean(pool, "none")
    assert type(lean) is engine.LeanMaxPool2d
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    x[..., 0, :3] = 1.0  # ties: torch's argmax rule must survive the round trip
    g = torch.randn(pool(x).shape, generator=torch.Generator().manual_seed(1))
    y_s, gx_s, bytes_s = step(pool, x, g)
    y_l, gx_l, bytes_l = step(lean, x, g)
    assert torch.equal(y_l, y_s) and torch.equal(gx_l, gx_s)
    assert bytes_l == y_s.numel()  # one uint8 position per output element
    assert bytes_s == x.numel() * 4 + y_s.numel() * 8  # stock: input and int64 indices


def test_max_pool_outside_the_byte_range_stays_stock() -> None:
    for pool in (nn.MaxPool2d(17, 1), nn.MaxPool2d(3, 1, dilation=2),
                 nn.MaxPool2d(2, return_indices=True)):
        lean = odt.lean(pool, "none")
        x = torch.randn(1, 2, 20, 20, requires_grad=True)
        n_lean, _ = saved_bytes(lean, lambda m=lean, x=x: m(x * 1.0))
        n_stock, _ = saved_bytes(pool, lambda m=pool, x=x: m(x * 1.0))
        assert n_lean == n_stock > 0


@pytest.mark.parametrize("inplace", [False, True])
def test_dropout_same_draws_and_gradients_bit_mask(inplace: bool) -> None:
    drop = nn.Dropout(0.3, inplace=inplace)
    lean = odt.lean(drop, "none").train()
    x = torch.randn(4, 5, 7)
    y_s, gx_s, bytes_s = step(drop, x, seed=3)
    y_l, gx_l, bytes_l = step(lean, x, seed=3)
    assert torch.equal(y_l, y_s) and torch.equal(gx_l, gx_s)
    assert bytes_l == math.ceil(x.numel() / 8) and bytes_s == x.numel() * 4
    # eval mode and p = 0 are the identity, as in torch
    assert torch.equal(odt.lean(nn.Dropout(0.5), "none").eval()(x), x)
    assert torch.equal(odt.lean(nn.Dropout(0.0), "none").train()(x), x)


SMOOTH = [
    ("hardswish", lambda: nn.Hardswish(), lambda x: F.hardswish(x)),
    ("hardswish_", lambda: nn.Hardswish(inplace=True), lambda x: F.hardswish(x, inplace=True)),
    ("silu", lambda: nn.SiLU(), F.silu),
    ("silu_", lambda: nn.SiLU(inplace=True), lambda x: F.silu(x, inplace=True)),
    ("gelu", lambda: nn.GELU(), F.gelu),
    ("gelu_tanh", lambda: nn.GELU(approximate="tanh"), lambda x: F.gelu(x, approximate="tanh")),
]
EDGES = torch.tensor([-4.0, -3.0, -2.9, -1.5, -1e-3, 0.0, 1e-3, 1.5, 2.9, 3.0, 3.5, 8.0])


@pytest.mark.parametrize("name, make, fn", SMOOTH)
def test_smooth_activations_exact_by_default(name, make, fn) -> None:
    """Exact mode: the exact backward needs the whole input, so torch's op runs (same
    values, gradients and bytes as stock)."""
    act = make()
    x = torch.cat([EDGES, torch.randn(52)]).view(4, 16)
    y_s, gx_s, bytes_s = step(act, x)
    y_l, gx_l, bytes_l = step(odt.lean(act, "none"), x)
    assert torch.equal(y_l, y_s) and torch.equal(gx_l, gx_s)
    assert bytes_l == bytes_s == x.numel() * 4


@pytest.mark.parametrize("name, make, fn", SMOOTH)
def test_mobiletl_backward_is_the_sign_step(name, make, fn) -> None:
    """MobileTL: forward exactly torch's; backward dy * 1[x > 0] (Chiang et al., AAAI
    2023), a 1-bit mask kept; for modules and for functional calls in a custom forward."""

    class Functional(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return fn(x)

    x = torch.cat([EDGES, torch.randn(52)]).view(4, 16)
    g = torch.randn(4, 16)
    for module in (make(), Functional()):
        plan = odt.plan(module, "none").with_activation_grad("mobiletl")
        y_l, gx_l, bytes_l = step(odt.lean(module, plan), x, g)
        y_s, _, _ = step(module, x, g)
        assert torch.equal(y_l, y_s)
        hand = torch.where(x > 0, g, torch.zeros(()))  # the step derivative by hand
        assert torch.equal(gx_l, hand)
        assert bytes_l == math.ceil(x.numel() / 8)
    # exact plan: a functional call stays torch's (input kept, exact gradient)
    _, gx_e, bytes_e = step(odt.lean(Functional(), "none"), x, g)
    _, gx_s, _ = step(Functional(), x, g)
    assert torch.equal(gx_e, gx_s) and bytes_e == x.numel() * 4


def test_activation_grad_follows_the_plan_on_relean() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.Hardswish(), nn.Linear(8, 2))
    mobile = odt.lean(model, odt.plan(model, "bias-only").with_activation_grad("mobiletl"))
    exact = odt.lean(mobile, odt.plan(mobile, "bias-only"))
    assert mobile[1].lean_activation_grad == "mobiletl"
    assert exact[1].lean_activation_grad == "exact"
    with pytest.raises(ValueError, match="activation_grad"):
        engine.lean_functions("sign")


@settings(max_examples=60, deadline=None)
@given(st.lists(st.booleans(), min_size=0, max_size=200), st.integers(0, 7))
def test_engine_mask_packer_is_numpy_packbits(bits: list[bool], offset: int) -> None:
    base = torch.tensor([False] * offset + bits, dtype=torch.bool)
    mask = base[offset:]  # also views that do not start on a word boundary
    packed = pack_mask(mask)
    assert np.array_equal(packed.numpy(), np.packbits(np.array(bits, dtype=bool)))
    assert torch.equal(unpack_mask(packed, mask.shape, mask.numel()).bool(), mask)


# ---------------------------------------------------------------- estimate vs measure

CASES = [(name, scheme, "exact") for name in ARCHS for scheme in ("full", "bias-only", "last:2")]
CASES += [(name, scheme, "mobiletl") for name in ("mobilenet_v3", "efficientnet", "vit")
          for scheme in ("full", "bias-only")]


@pytest.mark.parametrize("name, scheme, activation_grad", CASES)
def test_lean_estimate_matches_a_measured_lean_step(name, scheme, activation_grad) -> None:
    model = build_arch(name)
    x = example(name, 2)
    plan = odt.plan(model, scheme).with_activation_grad(activation_grad)
    est = odt.estimate(model, x, plan, optimizer="sgd-m", engine="lean")
    meas = odt.measure(model, x, plan, optimizer="sgd-m", engine="lean", rss=False)
    errors = compare(est, meas)
    assert all(abs(e) <= 0.02 for e in errors.values()), errors


def test_lean_peak_with_the_max_pool_is_estimated() -> None:
    """At batch 8 the ResNet-18-like net's lean peak is estimated within 0.5%; its max
    pooling, which writes the window positions straight from torch's int64 indices (no
    int64 temporary), stays below that peak."""
    model, x = build_arch("resnet18"), example("resnet18", 8)
    plan = odt.plan(model, "bias-only")
    est = odt.estimate(model, x, plan, engine="lean")
    meas = odt.measure(model, x, plan, engine="lean", rss=False)
    assert abs(compare(est, meas)["peak"]) <= 0.005
    assert dict(est.timeline)["forward: max_pool2d_with_indices"] < est.peak_bytes


def test_lean_ratios_and_what_limits_them() -> None:
    """Bias-only with frozen BN, exact gradients: >= 20x fewer activation bytes than
    stock on the ResNet-18-like net, >= 100x on the MobileNetV2-like net; on the
    MobileNetV3-like net MobileTL's sign masks take the hardswish inputs out, and the
    squeeze-excitation multiply is what is left."""
    ratios = {}
    for name in ("resnet18", "mobilenet_v2", "mobilenet_v3"):
        model, x = build_arch(name), example(name, 8)
        for mode in ("exact", "mobiletl"):
            plan = odt.plan(model, "bias-only").with_activation_grad(mode)
            stock = plan.apply_(copy.deepcopy(model))
            plan.norm_mode_(stock)
            lean = odt.lean(model, plan)
            y = torch.arange(8) % 10
            stock_bytes, _ = saved_bytes(stock, lambda m=stock, x=x, y=y: F.cross_entropy(m(x), y))
            lean_bytes, _ = saved_bytes(lean, lambda m=lean, x=x, y=y: F.cross_entropy(m(x), y))
            ratios[name, mode] = stock_bytes / lean_bytes
            notes = [n for n in odt.estimate(model, x, plan, engine="lean").notes
                     if n.startswith("lean stops")]
            if name == "mobilenet_v3":  # exact: the hardswish inputs; MobileTL: the SE gate
                assert ("Hardswish" in notes[0]) == (mode == "exact"), notes
                assert mode == "exact" or "squeeze-excitation" in notes[0], notes
            else:  # masks and window positions only: nothing limits lean
                assert notes == [], notes
    assert ratios["resnet18", "exact"] >= 20
    assert ratios["mobilenet_v2", "exact"] >= 100
    assert ratios["mobilenet_v3", "mobiletl"] > 2 * ratios["mobilenet_v3", "exact"]
