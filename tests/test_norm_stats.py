"""Norm statistics as a plan field: the mode a plan sets, the lean engine's refusal to
run in the other mode, and odt.train honouring it."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from torch import nn

import odtkit as odt


def net(track: bool = True) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8, track_running_stats=track), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def norm_modes(model: nn.Module) -> list[bool]:
    return [m.training for m in model.modules() if isinstance(m, nn.BatchNorm2d)]


# ---------------------------------------------------------------- the field


def test_field_is_validated_shown_and_hashable() -> None:
    model = net()
    p = odt.plan(model, "bias-only", norm_stats="frozen")
    assert p.norm_stats == "frozen"
    assert "norm statistics frozen" in p.describe().splitlines()[0]
    assert "norm_stats='frozen'" in repr(p)
    q = p.with_norm_stats("batch")
    assert q.norm_stats == "batch" and q != p and len({p, q, p.with_norm_stats("frozen")}) == 2
    assert dataclasses.replace(p, channels=()).norm_stats == "frozen"
    with pytest.raises(ValueError, match=r"norm_stats 'frozn'.*'frozen'.*frozen, batch"):
        odt.plan(model, "bias-only", norm_stats="frozn")
    with pytest.raises(ValueError, match="Valid choices: frozen, batch"):
        p.with_norm_stats("eval")


def test_full_defaults_to_batch() -> None:
    assert odt.plan(net(), "full").norm_stats == "batch"


def test_norm_mode_sets_only_norms_and_context_restores_every_module() -> None:
    model = net().train()
    model[2].eval()  # a mixed state must come back as it was
    before = [m.training for m in model.modules()]
    frozen = odt.plan(model, "bias-only", norm_stats="frozen")
    with frozen.norm_mode(model) as inside:
        assert inside is model and norm_modes(model) == [False, False]
        assert model.training and model[0].training and not model[2].training
    assert [m.training for m in model.modules()] == before
    model.eval()
    assert frozen.with_norm_stats("batch").norm_mode_(model) is model
    assert norm_modes(model) == [True, True] and not model.training


def test_frozen_plan_needs_running_statistics() -> None:
    model = net(track=False)
    p = odt.plan(model, "bias-only", norm_stats="frozen")
    with pytest.raises(ValueError, match=r"'1' \(BatchNorm2d\).*track_running_stats.*"
                                         r"norm_stats='batch'"):
        p.norm_mode_(model)
    with pytest.raises(ValueError, match="'1'"):
        p.norm_mode(model)
    with pytest.raises(ValueError, match="'1'"):
        odt.lean(model, p)
    p.with_norm_stats("batch").norm_mode_(model)  # batch statistics need none


def test_norm_mode_checks_the_model() -> None:
    p = odt.plan(net(), "bias-only")
    with pytest.raises(ValueError, match="different model"):
        p.norm_mode_(nn.Linear(2, 2))


# ---------------------------------------------------------------- the lean engine


def test_lean_copy_takes_the_plans_mode_and_refuses_the_other() -> None:
    model = net().train()
    x = torch.randn(4, 3, 8, 8)
    p = odt.plan(model, "bias-only", norm_stats="frozen")
    lean = odt.lean(model, p)
    assert lean.training and norm_modes(lean) == [False, False]
    assert norm_modes(model) == [True, True]  # the model itself is untouched
    lean(x).sum().backward()
    lean.train()  # what a user may well do before a training loop
    with pytest.raises(ValueError, match=r"layer '1' \(LeanBatchNorm2d\) runs in train mode.*"
                                         r"'bias-only' plan with norm_stats='frozen'.*"
                                         r"plan.norm_mode_\(model\)"):
        lean(x)
    p.norm_mode_(lean)
    lean(x)
    lean.eval()
    with torch.no_grad():
        lean(x)  # inference in eval mode is no training step: allowed

    batch = odt.lean(model, p.with_norm_stats("batch"))
    assert norm_modes(batch) == [True, True]
    batch[4].eval()
    with pytest.raises(ValueError, match=r"'4'.*eval mode.*norm_stats='batch'"):
        batch(x)


def test_lean_of_a_model_in_eval_mode_stays_in_eval_mode() -> None:
    model = net().eval()
    lean = odt.lean(model, odt.plan(model, "bias-only", norm_stats="batch"))
    assert not lean.training and norm_modes(lean) == [False, False]
    lean(torch.randn(2, 3, 8, 8))


def test_relean_keeps_the_check() -> None:
    model = net().train()
    p = odt.plan(model, "bias-only", norm_stats="frozen")
    again = odt.lean(odt.lean(model, p), p)
    again.train()
    with pytest.raises(ValueError, match="norm_stats='frozen'"):
        again(torch.randn(2, 3, 8, 8))
    assert copy.deepcopy(again).lean_plan == p
