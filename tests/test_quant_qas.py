"""Training the int8 graph in integer units, and QAS, against hand-derived gradients and
the fake-quantized float model run by autograd (``Reference`` from test_quant_int8)."""

from __future__ import annotations

import copy

import pytest
import torch
from test_quant_int8 import Reference, dequantized_outputs, inputs, zoo_model
from torch import nn
from torch.nn import functional as F

import odtkit as odt
from odtkit.quant import fold_bn_, norm_ratios, qas_, round_after_step_, to_int8


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=4), nn.ReLU6(),
        nn.Conv2d(8, 12, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, 10))


CASES = {"small": (small_net, (1, 8, 8)), "mbv2-tiny": (lambda: zoo_model("mbv2-tiny"), None)}


def case(name: str, n: int = 32):
    build, shape = CASES[name]
    model = build()
    x = (torch.randn(n, *shape, generator=torch.Generator().manual_seed(0)) if shape
         else inputs(name, n))
    y = torch.randint(0, 10, (n,), generator=torch.Generator().manual_seed(1))
    return model, x, y


def channel(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1, *([1] * (like.dim() - 1)))


def float_gradients(model, int8, x, y):
    """Gradients of the fake-quantized float model w.r.t. its float weights W = s_W W_int
    and biases b = s_W s_x b_int, with the forward held to the int8 graph's values (so
    only the chain rule is compared, not the rounding of near-ties)."""
    ref = Reference(model, x)
    for path, layer in int8.layers().items():
        s_w, s_x = layer.w_scale.double(), float(layer.in_scale)
        ref.leaves[path] = ((layer.weight.detach().double() * channel(s_w, layer.weight)).requires_grad_(),
                            (layer.bias.detach() * s_w * s_x).requires_grad_())
    out, _, _ = ref(x, forced=dequantized_outputs(int8, x))
    grads = torch.autograd.grad(F.cross_entropy(out, y), [t for p in ref.leaves.values() for t in p])
    return {path: (grads[2 * i], grads[2 * i + 1]) for i, path in enumerate(ref.leaves)}


def integer_gradients(int8, x, y):
    layers = int8.layers()
    grads = torch.autograd.grad(F.cross_entropy(int8(x).double(), y),
                                [t for layer in layers.values() for t in (layer.weight, layer.bias)])
    return {path: (grads[2 * i].double(), grads[2 * i + 1]) for i, path in enumerate(layers)}


# ----------------------------------------------------------- (a) the s_W factor


def test_integer_gradient_of_a_linear_layer_by_hand():
    """logits = s_y (q_y - z_y), q_y ~ (s_W s_x / s_y) acc: dL/dW_int[k, j] =
    s_W[k] s_x sum_b c[b, k] (q_x[b, j] - z_x) for L = sum c * logits (no clamping)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 3))
    x = torch.randn(16, 6)
    int8 = to_int8(model, 3 * x)            # a wide range: nothing saturates
    values = int8.forward_int8(x).values
    assert int(values.min()) > -128 and int(values.max()) < 127
    c = torch.randn(16, 3, dtype=torch.float64)
    layer = int8.layers()["0"]
    (F.linear(int8(x).double(), torch.eye(3, dtype=torch.float64)) * c).sum().backward()
    s_x, z_x = int8.activation_qparams()["input_quant"]
    q_x = torch.clamp(torch.round(x.double() / s_x) + z_x, -128, 127)
    s_w = layer.w_scale.double()
    want_w = s_w[:, None] * s_x * (c.T @ (q_x - z_x))
    want_b = s_w * s_x * c.sum(0)
    assert torch.allclose(layer.weight.grad.double(), want_w, rtol=1e-5)
    assert torch.allclose(layer.bias.grad, want_b, rtol=1e-9)


@pytest.mark.parametrize("name", list(CASES))
def test_integer_gradients_are_s_w_times_the_float_gradients(name):
    model, x, y = case(name)
    int8 = to_int8(model, x)
    ref, ours = float_gradients(model, int8, x, y), integer_gradients(int8, x, y)
    for path, layer in int8.layers().items():
        s_w, s_x = layer.w_scale.double(), float(layer.in_scale)
        gw, gb = ref[path]
        assert torch.allclose(ours[path][0], channel(s_w, gw) * gw, rtol=1e-4,
                              atol=1e-6 * float(gw.abs().max() * s_w.max())), path
        assert torch.allclose(ours[path][1], s_w * s_x * gb, rtol=1e-4,
                              atol=1e-6 * float((s_w * s_x * gb).abs().max())), path


# ----------------------------------------------------------- (b) QAS restores the ratios


@pytest.mark.parametrize("name", list(CASES))
def test_qas_restores_the_float_norm_ratios(name):
    """Per output channel, QAS makes ||G_int|| / ||W_int|| exactly the float model's
    ||G|| / ||W|| (without it: s_W^2 times that). Per layer, the int8 ratio is the RMS of
    the channel ratios weighted by ||W_int,c||^2 (the float one: by ||W_c||^2), so it
    lies between the smallest and largest channel ratio and, as weights differ by 1/s_c^2,
    within a factor max(s_W) / min(s_W) of the float layer ratio."""
    model, x, y = case(name)
    int8 = to_int8(model, x)
    ref = float_gradients(model, int8, x, y)
    naive = norm_ratios(int8, x, y, per_channel=True)
    qas_(int8)
    scaled = norm_ratios(int8, x, y, per_channel=True)
    layer_ratios = norm_ratios(int8, x, y)
    for path, layer in int8.layers().items():
        s_w = layer.w_scale.double()
        w_int = layer.weight.detach().double().reshape(len(s_w), -1)
        w = w_int * s_w[:, None]
        g = ref[path][0].reshape(len(s_w), -1)
        per_channel = g.norm(dim=1) / w.norm(dim=1)
        assert torch.allclose(scaled[path]["weight"], per_channel, rtol=1e-4), path
        assert torch.allclose(naive[path]["weight"], s_w**2 * per_channel, rtol=1e-4), path
        b = layer.bias.detach() * s_w * float(layer.in_scale)
        assert torch.allclose(scaled[path]["bias"], ref[path][1].abs() / b.abs(), rtol=1e-4)
        weights = w_int.norm(dim=1) ** 2
        rms = float(((weights * per_channel**2).sum() / weights.sum()).sqrt())
        assert layer_ratios[path]["weight"] == pytest.approx(rms, rel=1e-4), path
        fp32 = float(g.norm() / w.norm())
        spread = float(s_w.max() / s_w.min())
        assert fp32 / spread <= layer_ratios[path]["weight"] * (1 + 1e-6) <= fp32 * spread * (1 + 1e-6)


def test_qas_ratios_on_the_pretrained_model_match_fp32_and_naive_int8_does_not():
    """Free-running (no forcing), against the plain BN-folded fp32 model: after QAS every
    layer's ratio is within the per-layer factor above (plus 20% for the quantization
    noise of the forward); naive int8 is off by s_W^2, orders of magnitude."""
    task = odt.datasets.load("digits-shift")
    model = odt.models.create("mcunet-tiny", pretrained=True)
    x, y = task.x_train[:32], task.y_train[:32]
    fp32 = norm_ratios(fold_bn_(copy.deepcopy(model).eval()), x, y)
    int8 = to_int8(model, task.x_train[:256])
    naive = norm_ratios(int8, x, y)
    qas_(int8)
    scaled = norm_ratios(int8, x, y)
    for path, layer in int8.layers().items():
        spread = 1.2 * float(layer.w_scale.max() / layer.w_scale.min())
        assert fp32[path]["weight"] / spread <= scaled[path]["weight"] <= fp32[path]["weight"] * spread
        assert naive[path]["weight"] < 1e-3 * fp32[path]["weight"], path


# ----------------------------------------------------------- (c) integers after a step


def test_weights_after_a_step_are_integers_in_range():
    model, x, y = case("small")
    int8 = to_int8(model, x)
    qas_(int8)
    opt = odt.training.make_optimizer("sgd", int8.parameters(), lr=1e3)  # huge: hits the clamp
    round_after_step_(opt, int8, rounding="nearest")
    F.cross_entropy(int8(x), y).backward()
    opt.step()
    weights = torch.cat([layer.weight.detach().flatten() for layer in int8.layers().values()])
    biases = torch.cat([layer.bias.detach() for layer in int8.layers().values()])
    assert torch.equal(weights, weights.round()) and torch.equal(biases, biases.round())
    assert float(weights.abs().max()) == 127.0 and int((weights.abs() == 127).sum()) > 100
    assert float(biases.min()) >= -(2**31) and float(biases.max()) <= 2**31 - 1


def test_nearest_rounding_swallows_naive_int8_updates_but_not_qas_ones():
    """Naive SGD-M moves a weight by lr * s_W * G, far below half an integer unit: rounded
    to nearest after every step, no weight ever changes. With QAS the step is lr * G / s_W
    units, and weights move."""
    model, x, y = case("small")
    for qas, moves in ((False, False), (True, True)):
        int8 = to_int8(model, x)
        if qas:
            qas_(int8)
        before = {p: layer.weight.detach().clone() for p, layer in int8.layers().items()}
        opt = odt.training.make_optimizer("sgd-m", int8.parameters(), lr=0.05)
        round_after_step_(opt, int8, rounding="nearest")
        for _ in range(10):
            opt.zero_grad()
            F.cross_entropy(int8(x), y).backward()
            opt.step()
        moved = sum(int((layer.weight != before[p]).sum()) for p, layer in int8.layers().items())
        assert (moved > 0) == moves, qas


# ----------------------------------------------------------- (d) any optimizer


@pytest.mark.parametrize("optimizer", ["sgd", "sgd-m", "adam"])
def test_qas_steps_with_any_optimizer(optimizer):
    """One step on the scaled gradient g = G_int / s_W^2 is the optimizer's own rule:
    SGD and SGD-M (first step) -lr g, which in float units is exactly the float step
    -lr G; Adam (first step) -lr g / (|g| + eps), the same with or without QAS (Adam is
    blind to a gradient's scale). Then a few rounded steps lower the loss."""
    model, x, y = case("small")
    int8 = to_int8(model, x)
    plain = integer_gradients(int8, x, y)
    qas_(int8)
    lr = 1e-3 if optimizer == "adam" else 0.05
    opt = odt.training.make_optimizer(optimizer, int8.parameters(), lr=lr)
    before = {p: layer.weight.detach().double().clone() for p, layer in int8.layers().items()}
    F.cross_entropy(int8(x).double(), y).backward()
    opt.step()
    ref = float_gradients(model, to_int8(model, x), x, y)
    for path, layer in int8.layers().items():
        s_w = channel(layer.w_scale.double(), layer.weight)
        g = plain[path][0] / s_w**2
        step = layer.weight.detach().double() - before[path]
        ulp = 1e-5  # float32 weights near 127 resolve steps to ~7.6e-6
        if optimizer == "adam":
            assert torch.allclose(step, -lr * g / (g.abs() + 1e-8), rtol=1e-4, atol=ulp)
        else:
            assert torch.allclose(step, -lr * g, rtol=1e-4, atol=ulp)
            assert torch.allclose(step * s_w, -lr * ref[path][0], rtol=1e-3, atol=ulp * s_w.max())
    int8.round_()
    if optimizer == "adam":  # Adam steps lr units whatever the gradient's scale, QAS or not:
        for group in opt.param_groups:  # in integer units 1e-3 is nothing, half a unit is
            group["lr"] = 0.5
    round_after_step_(opt, int8, rounding="stochastic", seed=0)
    losses = []
    for _ in range(15):
        opt.zero_grad()
        loss = F.cross_entropy(int8(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


# ----------------------------------------------------------- the hooks themselves


def test_qas_scales_each_backward_once_and_can_be_removed():
    model, x, y = case("small")
    int8 = to_int8(model, x)
    layer = int8.layers()["0"]
    F.cross_entropy(int8(x), y).backward()
    plain = layer.weight.grad.clone()
    layer.weight.grad = None
    handle = qas_(int8)
    for _ in range(2):                                     # accumulate two backwards
        F.cross_entropy(int8(x), y).backward()
    factor = layer.w_scale.double().pow(-2).reshape(-1, 1, 1, 1)
    assert torch.allclose(layer.weight.grad.double(), 2 * plain.double() * factor, rtol=1e-5)
    with pytest.raises(ValueError, match="already applied"):
        qas_(int8)
    handle.remove()
    layer.weight.grad = None
    F.cross_entropy(int8(x), y).backward()
    assert torch.allclose(layer.weight.grad, plain)


def test_qas_refuses_what_it_cannot_scale():
    model, x, _ = case("small")
    with pytest.raises(TypeError, match="takes an Int8Model"):
        qas_(model)
    int8 = to_int8(model, x)
    for p in int8.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="requires grad"):
        qas_(int8)
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(ValueError, match="Did you mean 'stochastic'"):
        round_after_step_(opt, int8, rounding="stochastik")


def test_norm_ratios_of_a_float_model_leave_it_untouched():
    model, x, y = case("small")
    bn = model[1]
    stats = bn.running_mean.clone()
    got = norm_ratios(model, x, y)
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(bn.running_mean, stats) and model.training
    with odt.models.eval_mode(model):
        F.cross_entropy(model(x), y).backward()
    for path in ("0", "3", "5", "8"):
        layer = model.get_submodule(path)
        for kind in ("weight", "bias"):
            p = getattr(layer, kind).detach()
            want = (getattr(layer, kind).grad.norm() / p.norm()).item()
            assert got[path][kind] == pytest.approx(want, rel=1e-6)
    per_channel = norm_ratios(model, x, y, per_channel=True)
    assert per_channel["3"]["weight"].shape == (8,)
