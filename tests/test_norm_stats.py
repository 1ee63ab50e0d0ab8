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


pytestmark = pytest.mark.usefixtures("single_thread")


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


# ---------------------------------------------------------------- odt.train


def image_task(n_train: int = 32, side: int = 8) -> odt.datasets.Task:
    gen = torch.Generator().manual_seed(7)
    n = n_train + 16
    y = torch.randint(0, 4, (n,), generator=gen)
    x = torch.randn(n, 3, side, side, generator=gen) + y.view(-1, 1, 1, 1) * 0.5
    return odt.datasets.Task(name="toy-images", description="norm statistics tests",
                             x_train=x[:n_train].contiguous(), y_train=y[:n_train].contiguous(),
                             x_test=x[n_train:].contiguous(), y_test=y[n_train:].contiguous(),
                             input_shape=(3, side, side), classes=("a", "b", "c", "d"))


KW = dict(epochs=2, batch_size=8, lr=0.05, seed=0, progress=False)


def stats(model: nn.Module) -> list[torch.Tensor]:
    return [b.clone() for n, b in model.named_buffers() if "running" in n or "batches" in n]


@pytest.mark.parametrize("engine", ["pytorch", "lean"])
def test_train_honours_the_plans_norm_statistics(engine: str) -> None:
    task = image_task()
    model = net()
    before = stats(model)
    hist = odt.train(model, task, odt.plan(model, "bias-only", norm_stats="frozen"),
                     engine=engine, **KW)
    assert all(torch.equal(a, b) for a, b in zip(before, stats(model), strict=True))
    assert model.training and norm_modes(model) == [False, False]
    assert hist.engine == engine and hist.epochs == 2
    odt.train(model, task, odt.plan(model, "bias-only", norm_stats="batch"), engine=engine, **KW)
    assert not any(torch.equal(a, b) for a, b in zip(before, stats(model), strict=True))
    assert norm_modes(model) == [True, True]


def test_lean_training_matches_stock_training() -> None:
    task = image_task()
    for scheme, norm_stats in [("full", "batch"), ("bias-only", "frozen"), ("last:2", "batch")]:
        stock, lean = net(), net()
        plan = odt.plan(stock, scheme, norm_stats=norm_stats)
        h1 = odt.train(stock, task, plan, engine="pytorch", **KW)
        h2 = odt.train(lean, task, plan, engine="lean", **KW)
        for (name, a), b in zip(stock.state_dict().items(), lean.state_dict().values(),
                                strict=True):
            assert torch.allclose(a.float(), b.float(), rtol=1e-5, atol=1e-6), (scheme, name)
        assert h1.loss == pytest.approx(h2.loss, rel=1e-5)
        assert not odt.engine.is_lean(lean)  # the model itself stays a stock module


def saved_activation_bytes(model: nn.Module):
    """Context: counts the bytes of distinct tensors autograd saves (parameters and
    buffers excluded), resetting at each ``reset()``; ``peak`` is the most between resets."""
    owned = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    seen: dict[int, int] = {}
    box = {"peak": 0}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in owned:
            seen[ptr] = t.untyped_storage().nbytes()
            box["peak"] = max(box["peak"], sum(seen.values()))
        return t

    def reset() -> None:
        seen.clear()

    return torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), box, reset


def test_lean_training_realizes_the_lean_savings() -> None:
    task = image_task()
    model = net()
    plan = odt.plan(model, "bias-only", norm_stats="frozen")
    x = task.x_train[:8].clone()  # a batch of its own, as the loop gathers it
    one_step = {}
    for engine in ("pytorch", "lean"):
        work = odt.lean(model, plan) if engine == "lean" else plan.apply_(copy.deepcopy(model))
        plan.norm_mode_(work.train())
        hooks, box, _ = saved_activation_bytes(work)
        with hooks:
            nn.functional.cross_entropy(work(x), task.y_train[:8].clone()).backward()
        one_step[engine] = box["peak"]
    assert one_step["lean"] < one_step["pytorch"] / 4
    during = {}
    for engine in ("pytorch", "lean"):
        trained = net()
        hooks, box, reset = saved_activation_bytes(trained)

        def loss_fn(logits: torch.Tensor, y: torch.Tensor, reset=reset) -> torch.Tensor:
            loss = nn.functional.cross_entropy(logits, y)
            reset()  # the next step's forward saves new tensors
            return loss

        with hooks:
            odt.train(trained, task, plan, engine=engine, epochs=1, batch_size=8,
                      progress=False, loss_fn=loss_fn)
        during[engine] = box["peak"]
    assert during == one_step


def test_engine_is_checked_recorded_and_fingerprinted(tmp_path) -> None:
    task, model = image_task(), net()
    with pytest.raises(ValueError, match=r"engine 'leen'.*'lean'.*pytorch, lean"):
        odt.train(model, task, "bias-only", engine="leen", **KW)
    with pytest.raises(ValueError, match="engine='lean' trains fp32 plans only"):
        odt.train(model, task, "bias-only", precision="bf16", engine="lean", **KW)
    hist = odt.train(model, task, None, engine="lean", **{**KW, "epochs": 1})
    assert hist.engine == "lean" and "lean engine" in repr(hist)
    again = odt.training.History.from_dict(hist.as_dict())
    assert again == hist and odt.training.History.from_dict(
        {k: v for k, v in hist.as_dict().items() if k != "engine"}).engine == "pytorch"
    path = tmp_path / "run.pt"
    plan = odt.plan(model, "bias-only", norm_stats="frozen")
    odt.train(model, task, plan, engine="lean", checkpoint=path, **KW)
    with pytest.raises(ValueError, match="engine"):
        odt.train(model, task, plan, engine="pytorch", checkpoint=path, **KW)
    with pytest.raises(ValueError, match="norm statistics frozen"):
        odt.train(model, task, plan.with_norm_stats("batch"), engine="lean", checkpoint=path,
                  **KW)


def test_default_is_batch_for_full_and_frozen_for_fine_tuning_schemes() -> None:
    model = net()
    frozen = ["bias-only", "norm-only", "last:2", "none", ["8.weight"], lambda n, p: True]
    assert all(odt.plan(model, s).norm_stats == "frozen" for s in frozen)
    assert odt.plan(model, "full", channels={"0.weight": (1, [0])}).norm_stats == "batch"
    assert odt.plan(model, ["0.weight"], channels={"0.weight": (1, [0])}).norm_stats == "frozen"
    assert odt.plan(model, "bias-only", norm_stats="batch").norm_stats == "batch"
    assert odt.sparse.plan(model, biases=1, weights={"3": 0.5}).norm_stats == "frozen"


def test_bias_only_lean_training_needs_no_eval_call() -> None:
    """The issue's case: a bias-only plan keeps frozen statistics and the lean savings."""
    task, model = image_task(), net()
    assert model.training  # as created: no model.eval() by the user
    before = stats(model)
    hooks, box, reset = saved_activation_bytes(model)

    def loss_fn(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss = nn.functional.cross_entropy(logits, y)
        reset()
        return loss

    with hooks:
        odt.train(model, task, odt.plan(model, "bias-only"), engine="lean", loss_fn=loss_fn, **KW)
    assert all(torch.equal(a, b) for a, b in zip(before, stats(model), strict=True))
    assert box["peak"] == 1220  # the lean bias-only step of the test above (stock: 71,876)
