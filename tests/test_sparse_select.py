"""Channel and neuron selection for sparse updates, against references computed here:
hand-computed weight norms, torch.autograd gradients, F.cosine_similarity, a hand-run NEq
velocity recursion and hand-counted parameter budgets."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import odtkit as odt

sparse = odt.sparse


def _assert_close(got: torch.Tensor, want: torch.Tensor, atol: float = 1e-6,
                  rtol: float = 1e-5) -> None:
    """torch.allclose with the values shown (torch.testing's first call costs seconds)."""
    assert got.shape == want.shape and torch.allclose(got, want, atol=atol, rtol=rtol), \
        f"{got.tolist()} != {want.tolist()}"


# ------------------------------------------------------------------ magnitude
def _linear() -> nn.Linear:
    """Linear(4, 3) whose input-channel (column) norms are 5, 1, 1, 2."""
    fc = nn.Linear(4, 3)
    with torch.no_grad():
        fc.weight.copy_(torch.tensor([[3.0, 0.0, 1.0, 0.0],
                                      [4.0, 0.0, 0.0, 2.0],
                                      [0.0, 1.0, 0.0, 0.0]]))
    return fc


def test_magnitude_on_a_linear_selects_input_channels_by_hand_computed_norms():
    model = nn.Sequential(_linear())
    assert sparse.select_channels(model, "0", 0.5) == (0, 3)               # norms 5 and 2
    assert sparse.select_channels(model, "0", 0.5, "magnitude-smallest") == (1, 2)
    # channels 1 and 2 tie at norm 1: the lower index wins
    assert sparse.select_channels(model, "0", 0.25, "magnitude-smallest") == (1,)
    # output channels (rows): norms sqrt(10), sqrt(20), 1
    assert sparse.select_channels(model, "0", 0.34, dim=0) == (1,)
    assert sparse.select_channels(model, "0", 1.0) == (0, 1, 2, 3)


def test_magnitude_on_convs_full_and_depthwise():
    full = nn.Conv2d(2, 3, 2, bias=False)
    dw = nn.Conv2d(3, 3, 1, groups=3, bias=False)
    with torch.no_grad():
        full.weight.zero_()
        full.weight[:, 0] = 1.0          # input channel 0: norm sqrt(12) ~ 3.46
        full.weight[1, 1, 0, 0] = 2.0    # input channel 1: norm 2
        dw.weight.copy_(torch.tensor([-2.0, 1.0, 3.0]).view(3, 1, 1, 1))
    model = nn.Sequential(full, dw)
    assert sparse.select_channels(model, "0", 0.5) == (0,)
    assert sparse.select_channels(model, "0", 0.5, "magnitude-smallest") == (1,)
    # depthwise: its own channels (dim 0), norms 2, 1, 3; k = round(1.5) = 2
    assert sparse.select_channels(model, "1", 0.5) == (0, 2)
    assert sparse.select(model, {"0": 0.5, "1": 0.5}) == {"0.weight": (1, (0,)),
                                                         "1.weight": (0, (0, 2))}


# ------------------------------------------------------------------ gradient
def _convnet() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, groups=8), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 5))


def test_gradient_criterion_matches_autograd_and_leaves_the_model_untouched():
    model = _convnet().train()
    x, y = torch.randn(6, 3, 8, 8), torch.randint(0, 5, (6,))
    before = copy.deepcopy(model.state_dict())
    ref = copy.deepcopy(model)
    layers = ["0", "3", "6"]
    weights = [dict(ref.named_modules())[n].weight for n in layers]
    grads = torch.autograd.grad(F.cross_entropy(ref(x), y), weights)
    ratios = {"0": 0.34, "3": 0.25, "6": 0.5}
    dims = {"0": 1, "3": 0, "6": 1}
    got = sparse.select(model, ratios, "gradient", probe=(x, y))
    for name, g in zip(layers, grads, strict=True):
        d = dims[name]
        norms = [float(torch.linalg.vector_norm(g.select(d, c))) for c in range(g.shape[d])]
        k = max(1, round(ratios[name] * g.shape[d]))
        expected = tuple(sorted(sorted(range(len(norms)), key=lambda c: -norms[c])[:k]))
        assert got[f"{name}.weight"] == (d, expected)
        assert sparse.select_channels(model, name, ratios[name], "gradient",
                                      probe=(x, y)) == expected
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BN statistics included
    assert all(p.grad is None for p in model.parameters())
    assert model.training


# ------------------------------------------------------------------ random
def test_random_is_reproducible_seed_sensitive_and_layers_draw_apart():
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64))
    a = sparse.select_channels(model, "0", 0.5, "random", seed=3)
    assert a == sparse.select_channels(model, "0", 0.5, "random", seed=3)
    ref = torch.randperm(64, generator=torch.Generator().manual_seed(3))[:32]
    assert a == tuple(sorted(ref.tolist()))
    assert len({sparse.select_channels(model, "0", 0.5, "random", seed=s) for s in range(4)}) > 1
    both = sparse.select(model, {"0": 0.5, "2": 0.5}, "random", seed=3)
    assert both["0.weight"][1] != both["2.weight"][1]
    # the layer at position i of named_modules() draws with seed + i
    assert both["2.weight"][1] == sparse.select_channels(model, "2", 0.5, "random", seed=6)


@settings(max_examples=30, deadline=None)
@given(channels=st.integers(1, 40), ratio=st.floats(1e-3, 1.0),
       criterion=st.sampled_from(["magnitude-largest", "magnitude-smallest", "random"]),
       seed=st.integers(0, 2**31))
def test_selection_size_order_and_range(channels, ratio, criterion, seed):
    model = nn.Sequential(nn.Linear(channels, 2))
    idx = sparse.select_channels(model, "0", ratio, criterion, seed=seed)
    assert len(idx) == max(1, round(ratio * channels)) == sparse.channel_count(ratio, channels)
    assert list(idx) == sorted(set(idx)) and all(0 <= i < channels for i in idx)


# ------------------------------------------------------------------ NEq
@settings(max_examples=25, deadline=None)
@given(rows=st.integers(1, 6), cols=st.integers(1, 9), seed=st.integers(0, 10_000))
def test_neuron_delta_is_one_minus_torch_cosine_similarity(rows, cols, seed):
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(rows, cols, generator=gen) + 0.1
    b = torch.randn(rows, cols, generator=gen) - 0.1
    ref = 1 - F.cosine_similarity(a, b, dim=1)
    _assert_close(sparse.neuron_delta(a, b), ref, atol=1e-6, rtol=1e-5)


def test_neuron_delta_on_hand_made_outputs_and_dead_neurons():
    prev = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0], [0.0, 0.0], [2.0, 0.0]])
    cur = torch.tensor([[0.0, 3.0], [-2.0, -2.0], [0.0, 0.0], [1.0, 0.0], [1.0, 1.0]])
    expected = torch.tensor([1.0, 2.0, 0.0, 1.0, 1 - 1 / math.sqrt(2)])
    _assert_close(sparse.neuron_delta(prev, cur), expected)
    live = [0, 1, 4]
    _assert_close(sparse.neuron_delta(prev[live], cur[live]),
                               1 - F.cosine_similarity(prev[live], cur[live], dim=1))


def _rows(angles_deg: list[float]) -> torch.Tensor:
    r = torch.tensor(angles_deg, dtype=torch.float64).deg2rad()
    return torch.stack([r.cos(), r.sin()], dim=1).float()


def test_velocity_follows_the_hand_computed_recursion():
    """x_val = I, so each neuron's outputs are its weight row: rotating a row by an angle
    sets cos exactly. Neuron 0 turns 60 deg once, neuron 1 turns 90, 90, 0, neuron 2 rests."""
    fc = nn.Linear(2, 3, bias=False)
    model = nn.Sequential(fc).train()
    angles = [[0, 0, 0], [60, 90, 0], [60, 180, 0], [60, 180, 0]]
    with torch.no_grad():
        fc.weight.copy_(_rows(angles[0]))
    vel = sparse.Velocity(model, torch.eye(2), mu=0.5, eps=1e-3)
    with pytest.raises(RuntimeError, match=r"call \.update\(\)"):
        vel.velocity  # noqa: B018
    deltas = [[0.5, 1.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]]
    velocities = [[0.5, 1.0, 0.0],          # v1 = delta1 (v0 = 0, delta0 = 0)
                  [-0.25, 0.5, 0.0],        # 0.5 * v1 - (delta1 - delta2)
                  [-0.125, -0.75, 0.0]]     # 0.5 * v2 - (delta2 - delta3)
    for t in range(1, 4):
        with torch.no_grad():
            fc.weight.copy_(_rows(angles[t]))
        vel.update()
        _assert_close(vel.delta["0"], torch.tensor(deltas[t - 1]), atol=1e-6,
                                   rtol=0)
        _assert_close(vel.velocity["0"], torch.tensor(velocities[t - 1]),
                                   atol=1e-6, rtol=0)
        assert vel.frozen()["0"].tolist() == [False, False, True]
    assert model.training and not model._forward_hooks and vel.updates == 3


def test_velocity_reads_conv_outputs_over_samples_and_positions_in_eval_mode():
    model = _convnet().train()
    x = torch.randn(4, 3, 8, 8)
    vel = sparse.Velocity(model, x, layers=["3", "0"])
    assert vel.layers == ("0", "3")
    ref = copy.deepcopy(model).eval()
    with torch.no_grad():
        before = ref[0](x)
        model[0].weight.add_(0.3 * torch.randn_like(model[0].weight))
        after = model.eval()[0](x)
    model.train()
    stats = model[1].running_mean.clone()
    vel.update()
    expected = 1 - F.cosine_similarity(before.transpose(0, 1).reshape(8, -1),
                                       after.transpose(0, 1).reshape(8, -1), dim=1)
    _assert_close(vel.delta["0"], expected, atol=1e-5, rtol=1e-5)
    assert torch.equal(model[1].running_mean, stats) and model.training and model[1].training


# ------------------------------------------------------------------ budgets
class TwoHeads(nn.Module):
    """Two Linear layers on the same input: with x_val = I each neuron's outputs are its
    weight row. Neuron costs: a 2 + 1 (bias), b 2. Parameters: 9 + 4 = 13."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(2, 3)
        self.b = nn.Linear(2, 2, bias=False)
        with torch.no_grad():
            self.a.bias.zero_()
            self.a.weight.copy_(_rows([0, 0, 0]))
            self.b.weight.copy_(_rows([0, 0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.a(x), self.b(x)], dim=1)


def test_budget_counts():
    assert sparse.budget_params(13, 0.088) == 1
    assert sparse.budget_params(100, 0.29) == 29        # not 28 by binary rounding
    assert sparse.budget_params(TwoHeads(), 1.0) == 13 == sparse.total_params(TwoHeads())
    assert sparse.BUDGET_SHARES == (0.088, 0.151, 0.212, 0.274, 0.308, 0.5, 1.0)


def test_velocity_budget_selection_counts_parameters_by_hand():
    model = TwoHeads()
    vel = sparse.Velocity(model, torch.eye(2))
    vel.update()                      # nothing moved: every velocity 0, ties in model order
    assert vel.neuron_params() == {"a": 3, "b": 2}
    assert vel.select(0.5) == {"a.weight": (0, (0, 1)), "a.bias": (0, (0, 1))}
    with torch.no_grad():             # |v| = delta: a 1, 0.5, 0; b 2, 1.5
        model.a.weight.copy_(_rows([90, 60, 0]))
        model.b.weight.copy_(_rows([180, 120]))
    vel.update()
    # by |v|: b0 (cost 2), b1 (2), a0 (3), a1 (3), a2 (3); cumulative 2, 4, 7, 10, 13
    cases = {0.5: ({}, (0, 1)), 7 / 13: ((0,), (0, 1)), 0.8: ((0, 1), (0, 1)),
             1.0: ((0, 1, 2), (0, 1))}
    for share, (a_idx, b_idx) in cases.items():
        sel = vel.select(share)
        expected = {"b.weight": (0, b_idx)}
        if a_idx:
            expected |= {"a.weight": (0, a_idx), "a.bias": (0, a_idx)}
        assert sel == expected, share
        hand = 3 * len(a_idx) + 2 * len(b_idx)
        assert sparse.selected_params(model, sel) == hand <= sparse.budget_params(model, share)
    assert sparse.select(model, {"a": 0.34, "b": 0.5}, "velocity", velocity=vel) == {
        "a.weight": (0, (0,)), "b.weight": (0, (0,))}


# ------------------------------------------------------------------ plans
def test_plan_trains_the_named_biases_and_the_selected_weight_channels():
    model = _convnet()
    p = sparse.plan(model, biases=["0", "6"], weights={"0": 0.34, "6": 0.5, "3": 1.0})
    sel = sparse.select(model, {"0": 0.34, "6": 0.5})
    assert p.trainable == {"0.bias", "6.bias", "0.weight", "6.weight", "3.weight"}
    assert p.channels == tuple((n, d, idx) for n, (d, idx) in sel.items())  # 3: whole weight
    # conv 0: 1 of 3 input channels of (8, 3, 3, 3) = 72; fc: 4 of 8 inputs of (5, 8) = 20;
    # depthwise weight (8, 1, 3, 3) whole = 72; biases 8 + 5
    assert p.trainable_numel == 72 + 20 + 72 + 8 + 5
    last = sparse.plan(model, biases=2)          # layers with a bias: 0, 1 (BN), 3, 6
    assert last.trainable == {"3.bias", "6.bias"} and last.channels == ()


def test_a_velocity_selection_is_a_plan_with_the_same_parameter_count():
    model = TwoHeads()
    vel = sparse.Velocity(model, torch.eye(2))
    with torch.no_grad():
        model.a.weight.copy_(_rows([90, 60, 0]))
        model.b.weight.copy_(_rows([180, 120]))
    vel.update()
    sel = vel.select(0.8)
    p = odt.plan(model, list(sel), channels=sel)
    assert p.trainable_numel == sparse.selected_params(model, sel) == 10


def test_plan_refuses_biases_that_do_not_exist():
    model = _convnet()
    with pytest.raises(ValueError, match=r"'2' has no bias.*'0'"):
        sparse.plan(model, biases=["2"])
    with pytest.raises(ValueError, match=r"unknown layer \(for biases\) 'fc'"):
        sparse.plan(model, biases=["fc"])
    with pytest.raises(ValueError, match=r"biases=5.*has 4 layers with a bias.*\[0, 4\]"):
        sparse.plan(model, biases=5)


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize(("call", "error", "match"), [
    (lambda m: sparse.select_channels(m, "0", 0.0), ValueError, r"ratio for layer '0'.*0\.0"),
    (lambda m: sparse.select_channels(m, "0", 1.5), ValueError, r"\(0, 1\].*1\.5"),
    (lambda m: sparse.select_channels(m, "0", 0.5, "magnitude-larges"), ValueError,
     r"'magnitude-larges'.*Did you mean 'magnitude-largest'.*random"),
    (lambda m: sparse.select_channels(m, "conv0", 0.5), ValueError,
     r"unknown layer 'conv0'.*Valid choices: 0, 1, 2"),
    (lambda m: sparse.select_channels(m, "2", 0.5), ValueError,
     r"'2' \(ReLU\) has no weight.*'0'"),
    (lambda m: sparse.select_channels(m, "0", 0.5, "velocity"), ValueError,
     r"velocity=vel"),
    (lambda m: sparse.select_channels(m, "0", 0.5, "gradient"), ValueError,
     r"probe=\(x, y\)"),
    (lambda m: sparse.select_channels(m, "0", 0.5, dim=4), ValueError,
     r"dim for layer '0' must be an integer in \[0, 3\].*dim=4"),
    (lambda m: sparse.select(m, {}), TypeError, r"non-empty mapping"),
    (lambda m: sparse.budget_params(m, 15.1), ValueError, r"15\.1.*0\.151"),
    (lambda m: sparse.budget_params(m, 0), ValueError, r"budget_share=0"),
    (lambda m: sparse.Velocity(m, torch.zeros(1, 3, 8, 8), layers="0"), TypeError,
     r"wrap it"),
    (lambda m: sparse.Velocity(m, torch.zeros(1, 3, 8, 8), layers=["1"]), ValueError,
     r"BatchNorm2d.*conv and Linear"),
    (lambda m: sparse.Velocity(m, torch.zeros(1, 3, 8, 8), mu=1.0), ValueError, r"mu"),
])
def test_bad_input_names_the_value_and_the_fix(call, error, match):
    with pytest.raises(error, match=match):
        call(_convnet())


def test_velocity_criterion_wants_output_channels_and_a_tracked_layer():
    model = _convnet()
    vel = sparse.Velocity(model, torch.randn(2, 3, 8, 8), layers=["0"])
    vel.update()
    with pytest.raises(ValueError, match=r"dim=0"):
        sparse.select_channels(model, "0", 0.5, "velocity", dim=1, velocity=vel)
    with pytest.raises(ValueError, match=r"'6' is not tracked.*\['0'\].*layers=\[\.\.\., '6'\]"):
        sparse.select_channels(model, "6", 0.5, "velocity", velocity=vel)


def test_a_mistyped_layer_name_gets_the_closest_names():
    model = nn.Sequential()
    model.add_module("features", nn.Conv2d(3, 4, 3))
    model.add_module("fc", nn.Linear(4, 2))
    with pytest.raises(ValueError, match=r"unknown layer 'fc1'.*Did you mean 'fc'"):
        sparse.select_channels(model, "fc1", 0.5)
    with pytest.raises(ValueError, match=r"'fc.weight'.*Did you mean 'fc'"):
        sparse.select(model, {"fc.weight": 0.5})


def test_the_subpackage_is_public():
    assert "sparse" in odt.__all__
    assert set(sparse.__all__) >= {"CRITERIA", "select_channels", "select", "Velocity",
                                   "budget_params", "plan"}
    assert callable(sparse.plan) and callable(odt.plan)
    assert sparse.CRITERIA == ("magnitude-largest", "magnitude-smallest", "random",
                               "gradient", "velocity")
