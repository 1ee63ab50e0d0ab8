"""Fine-tuning under a parameter budget (odt.sparse.train_selected, select_neurons): the
budget holds, unselected neurons stay bit-identical, random is seeded, velocity follows a
Velocity tracker run here beside it, static selects once by its stated rule."""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest
import torch
from torch import nn

import odtkit as odt

sparse = odt.sparse


@pytest.fixture(scope="module")
def small(task):
    """digits cut to 256 training and 128 test samples: an epoch is 8 steps."""
    return dataclasses.replace(task, x_train=task.x_train[:256], y_train=task.y_train[:256],
                               x_test=task.x_test[:128], y_test=task.y_test[:128])


def _net() -> nn.Module:
    """conv(1->8)+BN, conv(8->8, stride 2), Linear(128->10): neurons carry 10, 73 and 129
    parameters (weight slice + bias); the BN's 16 affine parameters belong to no neuron."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(8 * 4 * 4, 10))


TOTAL = 80 + 16 + 584 + 1290


def test_the_share_used_never_exceeds_the_budget(small):
    model = _net()
    assert sparse.total_params(model) == TOTAL
    for share in (0.07, 0.088, 0.151, 0.308, 0.5, 1.0):
        budget = sparse.budget_params(model, share)
        for seed in range(5):
            for method in ("random", "static"):
                sel = sparse.select_neurons(model, share, method, seed=seed)
                assert 0 < sparse.selected_params(model, sel) <= budget
    for method in sparse.SELECTION_METHODS:
        res = sparse.train_selected(_net(), small, 0.151, method, epochs=2, seed=1)
        assert all(p <= res.budget_params for p in res.params)
        assert res.share_used <= 0.151 and res.budget_params == int(0.151 * TOTAL)
        assert res.params == tuple(sparse.selected_params(_net(), s) for s in res.selections)
    # the whole budget: every neuron, the BN's affine parameters still frozen
    full = sparse.select_neurons(_net(), 1.0, "random", seed=3)
    assert sparse.selected_params(_net(), full) == TOTAL - 16


def test_unselected_neurons_and_other_parameters_stay_bit_identical(small):
    start = _net()
    model = copy.deepcopy(start)
    res = sparse.train_selected(model, small, 0.2, "random", epochs=1, seed=0)
    sel = res.selections[0]
    before, after = dict(start.named_parameters()), dict(model.named_parameters())
    moved = 0
    for name, p in after.items():
        rows = set(sel[name][1]) if name in sel else set()
        for c in range(p.shape[0]):
            same = torch.equal(p[c], before[name][c])
            assert same or c in rows, f"{name}[{c}] changed but was not selected"
            moved += not same
    assert moved > 0
    for name, buf in start.named_buffers():  # running statistics stay frozen
        assert torch.equal(buf, dict(model.named_buffers())[name]), name


def test_random_is_reproducible_and_seed_sensitive(small):
    a = sparse.train_selected(_net(), small, 0.3, "random", epochs=2, seed=4)
    b = sparse.train_selected(_net(), small, 0.3, "random", epochs=2, seed=4)
    c = sparse.train_selected(_net(), small, 0.3, "random", epochs=2, seed=5)
    assert a.selections == b.selections and a.test_acc == b.test_acc and a.loss == b.loss
    assert a.selections != c.selections
    assert a.selections[0] != a.selections[1]  # a new draw every epoch
    once = sparse.train_selected(_net(), small, 0.3, "random", epochs=3, seed=4,
                                 reselect="once")
    assert once.selections[0] == a.selections[0] == once.selections[2]


def test_velocity_reselects_by_velocity_as_a_tracker_beside_it_does(small):
    share, x_val = 0.25, small.x_train[:32]
    model = _net()
    tracker = sparse.Velocity(model, x_val)  # records the outputs before training
    one = sparse.train_selected(model, small, share, "velocity", epochs=1, seed=2,
                                x_val=x_val)
    tracker.update()
    two = sparse.train_selected(_net(), small, share, "velocity", epochs=3, seed=2,
                                x_val=x_val)
    assert two.selections[0] == one.selections[0]
    # the first epoch trains the random method's own draw
    rand = sparse.train_selected(_net(), small, share, "random", epochs=1, seed=2)
    assert two.selections[0] == rand.selections[0] and two.first == "random"
    assert two.selections[1] == tracker.select(share)
    for layer, v in tracker.velocity.items():
        assert torch.equal(two.velocities[0][layer], v)
    assert len(two.velocities) == 3
    # |v| decides: every selected neuron is at least as fast as every unselected one
    v = two.velocities[1]
    chosen = {n[: -len(".weight")]: set(idx) for n, (_, idx) in two.selections[2].items()
              if n.endswith(".weight")}
    inside = [float(v[k][i].abs()) for k in v for i in chosen.get(k, ())]
    outside = [float(v[k][i].abs()) for k in v for i in range(len(v[k]))
               if i not in chosen.get(k, ())]
    assert min(inside) >= max(outside)


def test_velocity_variants_first_static_and_select_once(small):
    res = sparse.train_selected(_net(), small, 0.25, "velocity", epochs=3, seed=0,
                                first="static", reselect="once")
    assert res.selections[0] == sparse.select_neurons(_net(), 0.25, "static")
    assert res.selections[1] == res.selections[2] != res.selections[0]


def test_static_selects_once_nearest_the_output_by_weight_norm(small):
    model = _net()
    sel = sparse.select_neurons(model, 0.5, "static")
    # 985 parameters: the 10 classifier neurons (1290) do not all fit; the 7 of largest
    # weight-row norm do (903), the 8th would not
    assert list(sel) == ["6.weight", "6.bias"]
    norms = model[6].weight.detach().norm(dim=1)
    assert sel["6.weight"][1] == tuple(sorted(norms.argsort(descending=True)[:7].tolist()))
    res = sparse.train_selected(model, small, 0.5, "static", epochs=3, seed=0)
    assert res.selections == (sel,) * 3 and res.first is None
    assert dict(res.counts[0]) == {"6": 7}
    bigger = sparse.select_neurons(_net(), 0.9, "static")  # all of the head, then conv 3
    assert sparse.selected_params(_net(), bigger) <= sparse.budget_params(_net(), 0.9)
    assert bigger["6.weight"][1] == tuple(range(10)) and "3.weight" in bigger


def test_result_is_frozen_and_plain_numbers_for_json(small):
    res = sparse.train_selected(_net(), small, 0.3, "velocity", epochs=2, seed=0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        res.method = "random"
    with pytest.raises(TypeError):
        res.selections[0]["0.weight"] = (0, ())
    data = json.loads(json.dumps(res.as_dict(velocities=True)))
    assert data["test_acc"] == list(res.test_acc) and len(data["velocities"]) == 2
    assert res.epochs == 2 and 0 <= res.test_acc_before <= 1 and "velocity" in repr(res)


@pytest.mark.parametrize("kwargs, match", [
    ({"method": "velocty"}, r"'velocty'.*velocity"),
    ({"budget_share": 0}, "budget_share"),
    ({"budget_share": 15.1}, "15.1% is 0.151"),
    ({"budget_share": 0.05}, r"largest neuron carries \(129\).*>= 0.0654"),
    ({"reselect": "each"}, r"'each'.*epoch, once"),
    ({"first": "full"}, r"'full'.*random, static"),
    ({"epochs": 0}, "epochs"),
    ({"seed": -1}, "seed"),
    ({"x_val": torch.zeros(4, 3, 8, 8)}, r"x_val.*\(N, \*\(1, 8, 8\)\)"),
])
def test_bad_inputs_name_the_value_and_the_choices(small, kwargs, match):
    args = {"budget_share": 0.3, "method": "velocity", **kwargs}
    with pytest.raises(ValueError, match=match):
        sparse.train_selected(_net(), small, args.pop("budget_share"), args.pop("method"),
                              **args)


def test_bad_models_and_trackers():
    with pytest.raises(TypeError, match="torch.nn.Module"):
        sparse.select_neurons("net", 0.3, "random")
    with pytest.raises(TypeError, match="Velocity"):
        sparse.select_neurons(_net(), 0.3, "velocity")
    with pytest.raises(ValueError, match="no conv or Linear"):
        sparse.select_neurons(nn.Sequential(nn.ReLU()), 0.3, "static")
