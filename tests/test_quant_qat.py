"""Fake-quant QAT and BN folding against PyTorch: its observers and fake-quantize ops give
the reference forward, ``fuse_conv_bn_eval`` the reference folding."""

from __future__ import annotations

import copy
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.ao.quantization import (
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    PerChannelMinMaxObserver,
)
from torch.nn.utils.fusion import fuse_conv_bn_eval

import odtkit.models as zoo
from odtkit.plans import plan
from odtkit.quant import QATConfig, fold_bn_, prepare_qat_
from odtkit.quant.qat import QATConv2d, QATLinear

QUANT_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _activation_observer(moving: bool = False, c: float = 0.01):
    """PyTorch's observer for an int8 asymmetric activation, [-128, 127]."""
    if moving:
        return MovingAverageMinMaxObserver(averaging_constant=c, dtype=torch.qint8,
                                           quant_min=-128, quant_max=127)
    return MinMaxObserver(dtype=torch.qint8, quant_min=-128, quant_max=127)


def _reference_weight(w: torch.Tensor, bits: int = 8, per_channel: bool = True) -> torch.Tensor:
    """PyTorch's symmetric narrow-range weight fake quantization of ``w``."""
    q = 2 ** (bits - 1) - 1
    if per_channel:
        obs = PerChannelMinMaxObserver(ch_axis=0, dtype=torch.qint8, quant_min=-q, quant_max=q,
                                       qscheme=torch.per_channel_symmetric)
        obs(w.detach())
        s, z = obs.calculate_qparams()
        return torch.fake_quantize_per_channel_affine(w, s, z.to(torch.int32), 0, -q, q)
    obs = MinMaxObserver(dtype=torch.qint8, quant_min=-q, quant_max=q,
                         qscheme=torch.per_tensor_symmetric)
    obs(w.detach())
    s, z = obs.calculate_qparams()
    return torch.fake_quantize_per_tensor_affine(w, float(s), int(z), -q, q)


def _reference_input(x: torch.Tensor, obs) -> torch.Tensor:
    s, z = obs.calculate_qparams()
    return torch.fake_quantize_per_tensor_affine(x, float(s), int(z), -128, 127)


def test_prepared_linear_forward_and_gradients_equal_pytorch_fake_quantization():
    torch.manual_seed(0)
    layer = nn.Linear(6, 4)
    w_ref = layer.weight.detach().clone().requires_grad_()
    prepare_qat_(layer, QATConfig())
    assert type(layer) is QATLinear and isinstance(layer, nn.Linear)
    x = torch.randn(5, 6, generator=_gen(1)) * 2 + 0.3
    obs = _activation_observer()
    obs(x)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ref = F.linear(_reference_input(xb, obs), _reference_weight(w_ref), layer.bias.detach())
    out = layer(xa)
    assert torch.equal(out, ref)
    g = torch.randn(out.shape, generator=_gen(2))
    (out * g).sum().backward()
    (ref * g).sum().backward()
    assert torch.equal(layer.weight.grad, w_ref.grad)
    assert torch.equal(xa.grad, xb.grad)


def test_prepared_conv2d_with_per_tensor_4_bit_weights_equals_explicit_computation():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, stride=2, padding=1)
    prepare_qat_(conv, QATConfig(weight_bits=4, per_channel_weights=False))
    x = torch.randn(2, 3, 7, 7, generator=_gen(3))
    obs = _activation_observer()
    obs(x)
    ref = F.conv2d(_reference_input(x, obs), _reference_weight(conv.weight.detach(), 4, False),
                   conv.bias.detach(), stride=2, padding=1)
    assert type(conv) is QATConv2d
    assert torch.equal(conv(x), ref)
    assert len(torch.unique(_reference_weight(conv.weight.detach(), 4, False))) <= 15


@pytest.mark.parametrize("observer,c", [("minmax", 0.01), ("moving-average", 0.01),
                                        ("moving-average", 0.3)])
def test_observers_track_like_pytorch_in_train_mode_and_freeze_in_eval(observer, c):
    layer = prepare_qat_(nn.Linear(4, 3), QATConfig(activation_observer=observer,
                                                    averaging_constant=c))
    ref = _activation_observer(moving=observer == "moving-average", c=c)
    for i in range(4):
        x = torch.randn(8, 4, generator=_gen(10 + i)) * (i + 1) + i
        layer(x)
        ref(x)
        assert torch.equal(layer.activation_min, ref.min_val)
        assert torch.equal(layer.activation_max, ref.max_val)
    scale, zero_point = layer.activation_qparams()
    ref_scale, ref_zero_point = ref.calculate_qparams()
    assert torch.equal(scale.reshape(1), ref_scale)
    assert torch.equal(zero_point.reshape(1), ref_zero_point)
    layer.eval()
    big = (torch.randn(8, 4, generator=_gen(20)) * 100).requires_grad_()
    layer(big).sum().backward()
    assert torch.equal(layer.activation_min, ref.min_val)        # frozen
    # inputs beyond the frozen range are clamped: their gradient is 0, as PyTorch's op says
    probe = big.detach().clone().requires_grad_()
    _reference_input(probe, ref).sum().backward()
    assert torch.equal(big.grad == 0, probe.grad == 0) and bool((probe.grad == 0).any())


def test_eval_before_any_observation_says_to_train_first():
    layer = prepare_qat_(nn.Linear(4, 3)).eval()
    with pytest.raises(RuntimeError, match=r"model.train\(\)"):
        layer(torch.randn(2, 4))


def _toy_data():
    g = _gen(7)
    x = torch.randn(64, 1, 8, 8, generator=g)
    teacher = torch.randn(64, 3, generator=g)
    return x, (x.flatten(1) @ teacher).argmax(dim=1)


def test_tiny_model_trains_with_qat_and_its_loss_goes_down():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(256, 3))
    params = list(model.parameters())       # taken before prepare_qat_, as an optimizer does
    prepare_qat_(model, QATConfig(weight_bits=4, activation_bits=6))
    x, y = _toy_data()
    first = None
    for _ in range(25):                     # plain SGD, lr 0.1
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        with torch.no_grad():
            for p in params:
                p -= 0.1 * p.grad
                p.grad = None
        first = loss.item() if first is None else first
    model.eval()
    final = F.cross_entropy(model(x), y).item()
    assert final < 0.5 * first, (first, final)


@pytest.mark.parametrize("name", zoo.names())
def test_prepare_keeps_parameter_names_and_objects_and_plans(name):
    model = zoo.create(name)
    before = dict(model.named_parameters())
    keys = set(model.state_dict())
    bias_only = plan(model, "bias-only")
    n_layers = sum(type(m) in QUANT_LAYERS for m in model.modules())
    prepare_qat_(model)
    after = dict(model.named_parameters())
    assert list(after) == list(before)
    assert all(after[k] is before[k] for k in before)
    quantized = [n for n, m in model.named_modules() if type(m).__name__.startswith("QAT")]
    assert len(quantized) == n_layers > 0
    assert set(model.state_dict()) == keys | {f"{n}.{b}" for n in quantized
                                              for b in ("activation_min", "activation_max")}
    bias_only.apply_(model)
    assert {k for k, p in model.named_parameters() if p.requires_grad} == set(bias_only.trainable)


def test_state_dict_round_trips_and_a_float_checkpoint_loads():
    torch.manual_seed(0)
    float_model = zoo.create("mlp")
    model = prepare_qat_(copy.deepcopy(float_model))
    x = zoo.example_input(model, batch_size=4)
    model(x)                                             # observe once (train mode)
    model.eval()
    fresh = prepare_qat_(copy.deepcopy(float_model))
    fresh.load_state_dict(model.state_dict())            # strict
    assert torch.equal(fresh.eval()(x), model(x))
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    assert torch.equal(torch.load(buffer, weights_only=False)(x), model(x))
    unobserved = prepare_qat_(zoo.create("mlp"))
    unobserved.load_state_dict(float_model.state_dict())  # strict: observer keys may be absent
    assert torch.equal(unobserved[1].weight, float_model[1].weight)
    assert unobserved[1].activation_min.item() == float("inf")


@pytest.mark.parametrize("kwargs,error,words", [
    ({"weight_bits": 1}, ValueError, ["weight_bits=1", "[2, 16]"]),
    ({"activation_bits": 32}, ValueError, ["activation_bits=32"]),
    ({"activation_observer": "min-max"}, ValueError, ["'min-max'", "Did you mean 'minmax'"]),
    ({"averaging_constant": 0.0}, ValueError, ["averaging_constant=0.0", "(0, 1]"]),
    ({"averaging_constant": 1.5}, ValueError, ["averaging_constant=1.5"]),
    ({"symmetric_weights": "no"}, TypeError, ["symmetric_weights='no'", "True or False"]),
    ({"per_channel_weights": 1}, TypeError, ["per_channel_weights=1"]),
])
def test_config_refuses_bad_values_by_name(kwargs, error, words):
    with pytest.raises(error) as info:
        QATConfig(**kwargs)
    for word in words:
        assert word in str(info.value), (word, str(info.value))


def test_prepare_refuses_what_it_cannot_quantize():
    with pytest.raises(ValueError, match="nothing to quantize.*ReLU"):
        prepare_qat_(nn.Sequential(nn.ReLU(), nn.Flatten()))
    model = prepare_qat_(nn.Sequential(nn.Linear(2, 2)))
    with pytest.raises(ValueError, match="already prepared.*'0'"):
        prepare_qat_(model)
    with pytest.raises(TypeError, match="QATConfig"):
        prepare_qat_(nn.Linear(2, 2), {"weight_bits": 8})
    with pytest.raises(TypeError, match="torch.nn.Module"):
        prepare_qat_(torch.ones(2))


def _assert_close(actual: torch.Tensor, expected: torch.Tensor, tol: float) -> None:
    """|actual - expected| <= tol * (1 + |expected|) everywhere (absolute and relative tol)."""
    diff = (actual - expected).abs().max().item()
    assert torch.allclose(actual, expected, atol=tol, rtol=tol), f"max difference {diff:.3g}"


# ----------------------------------------------------------------------------- BN folding
def _randomize_bn_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial running statistics and affine parameters on every BatchNorm."""
    g = _gen(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=g) * 2 - 1)
                m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
                if m.affine:
                    m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                    m.bias.copy_(torch.rand(n, generator=g) - 0.5)
    return model


@pytest.mark.parametrize("conv,bn", [
    (lambda: nn.Conv2d(3, 5, 3, padding=1, bias=False), lambda: nn.BatchNorm2d(5)),
    (lambda: nn.Conv2d(3, 5, 3, bias=True), lambda: nn.BatchNorm2d(5, eps=1e-3)),
    (lambda: nn.Conv1d(4, 6, 3, groups=2), lambda: nn.BatchNorm1d(6, affine=False)),
])
def test_fold_of_one_pair_equals_pytorch_fuse_conv_bn_eval(conv, bn):
    torch.manual_seed(0)
    seq = _randomize_bn_(nn.Sequential(conv(), bn())).eval()
    ref = fuse_conv_bn_eval(copy.deepcopy(seq[0]), copy.deepcopy(seq[1]))
    weight = seq[0].weight
    x = torch.randn(2, seq[0].in_channels, *([6, 6] if isinstance(seq[0], nn.Conv2d) else [9]))
    expected = seq(x)
    fold_bn_(seq)
    assert isinstance(seq[1], nn.Identity) and seq[0].weight is weight
    _assert_close(seq[0].weight, ref.weight, 1e-6)
    _assert_close(seq[0].bias, ref.bias, 1e-6)
    _assert_close(seq(x), expected, 1e-5)


WITH_BN = [n for n in zoo.names() if any(isinstance(m, nn.modules.batchnorm._BatchNorm)
                                         for m in zoo.create(n).modules())]


@pytest.mark.parametrize("name", WITH_BN)
def test_fold_keeps_every_zoo_model_output_in_eval(name):
    torch.manual_seed(0)
    model = _randomize_bn_(zoo.create(name)).eval()
    x = zoo.example_input(model, batch_size=4)
    expected = model(x)
    fold_bn_(model)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    _assert_close(model(x), expected, 1e-5)


def test_fold_leaves_other_batchnorms_and_refuses_one_without_statistics():
    assert len(WITH_BN) >= 4 and "mlp" not in WITH_BN
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    fold_bn_(model)
    assert isinstance(model[1], nn.BatchNorm1d)
    bad = nn.Sequential(nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2, track_running_stats=False)))
    with pytest.raises(ValueError, match="'0.1'.*track_running_stats=True"):
        fold_bn_(bad)
