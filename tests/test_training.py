"""The training loop against a hand-written reference loop; determinism, History,
atomic checkpoints and exact resume (including a real SIGKILLed process)."""

from __future__ import annotations

import copy
import math
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path
from types import SimpleNamespace

import matplotlib.pyplot as plt
import pytest
import torch
from _train_worker import CONFIG, STEPS_PER_EPOCH, make_model, make_task
from torch import nn
from torch.nn import functional as F

import odtkit
from odtkit._io import save_atomic
from odtkit.training import (
    History,
    TrainingDiverged,
    evaluate,
    load_checkpoint,
    train,
)
from odtkit.viz.training import accuracy_curves, loss_curve

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("_train_worker.py")
TOTAL_STEPS = CONFIG["epochs"] * STEPS_PER_EPOCH
NO_CHECKPOINT = {k: v for k, v in CONFIG.items() if k != "checkpoint_every"}


@contextmanager
def one_thread():
    """Bit-exact comparisons across processes need the same thread count everywhere."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


pytestmark = pytest.mark.usefixtures("single_thread")


def assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        assert torch.equal(sa[key], sb[key]), f"{key} differs"


def assert_same_history(a: History, b: History) -> None:
    """Everything but wall time must match exactly."""
    da, db = a.as_dict(), b.as_dict()
    for key in ("loss", "train_acc", "test_acc", "steps", "samples"):
        assert da[key] == db[key], key
    assert len(a.time_s) == len(b.time_s) and all(t > 0 for t in a.time_s + b.time_s)


class Crash(Exception):
    pass


class CrossEntropyOrCrash:
    """Cross-entropy that raises on its ``crash_at``-th call (an interrupted run)."""

    def __init__(self, crash_at: int | None = None) -> None:
        self.crash_at, self.calls = crash_at, 0

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == self.crash_at:
            raise Crash(f"crash at call {self.calls}")
        return F.cross_entropy(logits, labels)


# ---------------------------------------------------------------- the loop itself


def test_matches_hand_written_reference_loop():
    task, cfg = make_task(), dict(epochs=2, batch_size=8, lr=0.05, seed=11)
    model, ref = make_model(), make_model()
    hist = train(model, task, optimizer="sgd-m", progress=False, **cfg)

    # the reference: torch's own SGD with momentum, one permutation per epoch
    torch.manual_seed(cfg["seed"])
    gen = torch.Generator().manual_seed(cfg["seed"])
    opt = torch.optim.SGD(ref.parameters(), lr=cfg["lr"], momentum=0.9)
    ref_loss, ref_acc = [], []
    for _ in range(cfg["epochs"]):
        ref.train()
        perm = torch.randperm(len(task.x_train), generator=gen)
        total, correct = 0.0, 0
        for start in range(0, len(perm), cfg["batch_size"]):
            idx = perm[start : start + cfg["batch_size"]]
            opt.zero_grad()
            out = ref(task.x_train[idx])
            loss = F.cross_entropy(out, task.y_train[idx])
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
            correct += int((out.argmax(1) == task.y_train[idx]).sum())
        ref_loss.append(total / len(perm))
        ref.eval()
        with torch.no_grad():
            ref_acc.append((ref(task.x_test).argmax(1) == task.y_test).float().mean().item())
    assert_same_weights(model, ref)
    assert hist.loss == pytest.approx(ref_loss, rel=1e-12)
    assert hist.test_acc == pytest.approx(ref_acc, abs=1e-9)
    per_epoch, n = math.ceil(len(task.x_train) / cfg["batch_size"]), len(task.x_train)
    assert hist.steps == [per_epoch, 2 * per_epoch] and hist.samples == [n, 2 * n]
    assert hist.test_acc[-1] > 0.6  # the toy task is learnable


def test_same_seed_same_numbers_other_seed_differs():
    task = make_task()
    runs = []
    for seed in (5, 5, 6):
        model = make_model()
        runs.append((model, train(model, task, epochs=2, seed=seed, progress=False)))
    assert_same_weights(runs[0][0], runs[1][0])
    assert_same_history(runs[0][1], runs[1][1])
    assert not torch.equal(runs[0][0][2].weight, runs[2][0][2].weight)


@pytest.mark.parametrize("as_plan", [lambda m: odtkit.plan(m, "last:1"), lambda m: "last:1"])
def test_plan_is_applied_and_frozen_parameters_stay(as_plan):
    """A TrainPlan and its scheme string train exactly the last layer ("6.*")."""
    model = make_model()
    before = copy.deepcopy(model.state_dict())
    train(model, make_task(), as_plan(model), epochs=1, progress=False)
    for name, p in model.named_parameters():
        changed = not torch.equal(p, before[name])
        assert changed == p.requires_grad == name.startswith("6."), name


def test_int8_plan_on_a_float_model_is_refused():
    model = make_model()
    with pytest.raises(TypeError, match=r"precision='int8' trains the int8 graph.*to_int8"):
        train(model, make_task(), odtkit.plan(model, "full", precision="int8"),
              progress=False)  # fmt: skip


def block_model() -> nn.Sequential:
    torch.manual_seed(5)
    block = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 16))
    model = nn.Sequential(nn.Flatten(), block, nn.ReLU(), nn.Linear(16, 3))
    model.input_shape = (1, 4, 4)
    return model


def test_recompute_plan_reruns_the_block_in_backward_with_the_same_result():
    """A plan's recompute is honoured: the block's first Linear runs twice per step (forward
    and recomputation in backward), and the weights end as plain training leaves them."""
    task, cfg = make_task(), dict(epochs=2, batch_size=8, progress=False)
    plain, redo = block_model(), block_model()
    calls = []
    redo[1][0].register_forward_hook(lambda *_: calls.append(torch.is_grad_enabled()))
    h_plain = train(plain, task, odtkit.plan(plain, "full"), **cfg)
    h_redo = train(redo, task, odtkit.plan(redo, "full", recompute=["1"]), **cfg)
    steps = h_redo.steps[-1]
    assert calls.count(True) == 2 * steps  # no-grad calls: the shape probe and evaluation
    for (name, a), b in zip(redo.state_dict().items(), plain.state_dict().values(), strict=True):
        assert torch.allclose(a, b, atol=1e-6, rtol=0), name
    assert h_redo.loss == pytest.approx(h_plain.loss, rel=1e-5)


def test_adam_and_max_steps_cut_an_epoch():
    model = make_model()
    hist = train(model, make_task(), epochs=3, batch_size=8, optimizer="adam", lr=0.01,
                 max_steps=5, progress=False)  # fmt: skip
    assert hist.steps == [5] and hist.samples == [40] and len(hist) == 1


def test_callbacks_progress_and_mode(capsys):
    seen = []
    model = make_model()
    train(model, make_task(), epochs=2, callbacks=[lambda h, m: seen.append((len(h), m))])
    assert seen == [(1, model), (2, model)]
    assert "train toy-thirds" in capsys.readouterr().err  # the tqdm bar
    assert model.training


def test_evaluate_counts_and_restores_modes():
    model = make_model()
    x, y = make_task().x_test, make_task().y_test
    model.train()
    model[3].eval()  # a mixed state must come back as it was
    with torch.no_grad():
        model.eval()
        expected = (model(x).argmax(1) == y).sum().item() / len(y)
        model.train()
        model[3].eval()
    assert evaluate(model, x, y, batch_size=7) == pytest.approx(expected)
    assert model.training and not model[3].training
    with pytest.raises(ValueError, match="differ in length"):
        evaluate(model, x, y[:-1])


# ---------------------------------------------------------------- bad input


def test_shape_mismatch_names_both_shapes():
    model = make_model(side=8)  # expects (1, 8, 8)
    with pytest.raises(ValueError, match=r"\(1, 4, 4\).*input_shape \(1, 8, 8\)"):
        train(model, make_task(side=4), progress=False)


def test_wrong_class_count_is_reported():
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 10))
    with pytest.raises(ValueError, match="3 classes"):
        train(model, make_task(), progress=False)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"epochs": 0}, "epochs=0"),
        ({"batch_size": 0}, "batch_size=0"),
        ({"batch_size": 2.5}, "batch_size=2.5"),
        ({"checkpoint_every": 0}, "checkpoint_every=0"),
        ({"lr": -1.0}, "lr=-1.0"),
        ({"lr": math.nan}, "lr=nan"),
        ({"momentum": math.nan}, "momentum=nan"),
        ({"momentum": 1.0}, r"momentum must be a finite number in \[0, 1\)"),
        ({"weight_decay": -1}, "weight_decay=-1"),
        ({"seed": -1}, "seed=-1"),
        ({"max_steps": 0}, "max_steps=0"),
        ({"seed": 1.5}, "seed=1.5"),
        ({"checkpoint_every": 5}, "checkpoint_every=5 needs a file"),
        ({"optimizer": "sgdm"}, "unknown optimizer 'sgdm'"),
        ({"drop_last": True, "batch_size": 500}, "drop_last"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        train(make_model(), make_task(), progress=False, **kwargs)


class InfFrom:
    """Cross-entropy that turns infinite from its ``start``-th call on."""

    def __init__(self, start: int) -> None:
        self.start, self.calls = start, 0

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return F.cross_entropy(logits, labels) * (math.inf if self.calls >= self.start else 1)


def test_non_finite_loss_stops_before_the_update_and_keeps_the_last_good_checkpoint(tmp_path):
    task, path = make_task(), tmp_path / "run.pt"
    model = make_model()
    with pytest.raises(TrainingDiverged, match=r"loss became inf at step 15 \(epoch 2, step 3 "
                       r"of 12\)") as info:  # fmt: skip
        train(model, task, epochs=3, batch_size=8, checkpoint=path, progress=False,
              loss_fn=InfFrom(15))  # fmt: skip
    assert isinstance(info.value, FloatingPointError) and info.value.step == 15
    assert str(path) in str(info.value) and "holds the last good state" in str(info.value)
    # the checkpoint still loads and holds epoch 1's weights, as a 1-epoch run ends
    ref = make_model()
    train(ref, task, epochs=1, batch_size=8, progress=False)
    saved = load_checkpoint(path)
    assert saved["loop"]["global_step"] == 12 and len(saved["history"]["loss"]) == 1
    for key, value in ref.state_dict().items():
        assert torch.equal(saved["model"][key], value), key
        assert torch.isfinite(saved["model"][key].float()).all(), key
    assert all(torch.isfinite(p).all() for p in model.parameters())  # no update with inf


def test_huge_learning_rate_names_step_loss_and_lr(task):
    task = task.subset(n_train=200, n_test=50)  # the session's digits
    model = odtkit.models.create("mlp", input_shape=task.input_shape, num_classes=10, seed=0)
    with pytest.raises(TrainingDiverged, match=r"lr=1e\+06 is too large.*try lr=100000") as info:
        train(model, task, lr=1e6, epochs=3, batch_size=8, progress=False)
    message = str(info.value)
    assert f"at step {info.value.step} " in message and f"loss became {info.value.loss}" in message


def test_loss_fn_must_return_a_scalar():
    def per_sample(logits, labels):
        return F.cross_entropy(logits, labels, reduction="none")

    with pytest.raises(ValueError, match=r"loss_fn must return a scalar.*shape \(8,\)"):
        train(make_model(), make_task(), batch_size=8, loss_fn=per_sample, progress=False)


def test_not_a_task_or_plan():
    with pytest.raises(TypeError, match="x_train"):
        train(make_model(), object(), progress=False)
    with pytest.raises(TypeError, match="plan must be a TrainPlan .* or a scheme name"):
        train(make_model(), make_task(), plan=42, progress=False)
    with pytest.raises(ValueError, match="Did you mean 'bias-only'"):
        train(make_model(), make_task(), plan="bias-onyl", progress=False)


def test_bad_labels_are_reported():
    task = make_task()  # Task validates its labels itself: a duck-typed copy gets past that
    bad = SimpleNamespace(**{f.name: getattr(task, f.name) for f in fields(task)})
    bad.y_train, bad.num_classes = task.y_train + 3, task.num_classes
    with pytest.raises(ValueError, match=r"class indices in \[0, 3\)"):
        train(make_model(), bad, progress=False)


# ---------------------------------------------------------------- History and figures


def test_history_helpers():
    h = History(loss=[1.0, 0.5, 0.7], train_acc=[0.3, 0.6, 0.7], test_acc=[0.4, 0.8, 0.8],
                time_s=[0.1, 0.1, 0.2], steps=[3, 6, 9], samples=[30, 60, 90])  # fmt: skip
    assert h.best()["epoch"] == 2 and h.best("loss")["epoch"] == 2
    assert h.final() == {"epoch": 3, "loss": 0.7, "train_acc": 0.7, "test_acc": 0.8,
                         "time_s": 0.2, "steps": 9, "samples": 90}  # fmt: skip
    assert History.from_dict(h.as_dict()) == h
    assert "3 epochs" in repr(h) and "best test_acc=0.800 @ epoch 2" in repr(h)
    with pytest.raises(ValueError, match="one entry per epoch"):
        History(loss=[1.0])
    with pytest.raises(ValueError, match="empty"):
        History().final()
    with pytest.raises(ValueError, match="Did you mean 'test_acc'"):
        h.best("test-acc")
    assert odtkit.History is History and odtkit.train is train


def test_figures_plot_the_history_numbers():
    a = History([1.0, 0.5], [0.3, 0.6], [0.4, 0.8], [0.1, 0.1], [3, 6], [30, 60])
    b = History([0.9, 0.4, 0.3], [0.2, 0.7, 0.9], [0.5, 0.6, 0.9], [0.1] * 3, [3, 6, 9],
                [30, 60, 90])  # fmt: skip
    fig = accuracy_curves({"a": a, "b": b})
    lines = fig.axes[0].get_lines()
    assert [ln.get_label() for ln in lines] == ["a", "b"]
    assert list(lines[1].get_xdata()) == [1, 2, 3] and list(lines[1].get_ydata()) == b.test_acc
    styles = {(ln.get_marker(), ln.get_color()) for ln in lines}
    assert len(styles) == 2 and len({m for m, _ in styles}) == 2  # own marker and colour each
    with pytest.raises(ValueError, match="at most 10"):
        accuracy_curves({str(i): a for i in range(11)})
    fig2 = loss_curve(b)
    assert list(fig2.axes[0].get_lines()[0].get_ydata()) == b.loss
    assert list(fig2.axes[1].get_lines()[0].get_ydata()) == b.test_acc
    with pytest.raises(ValueError, match="unknown metric"):
        accuracy_curves({"a": a}, metric="acc")
    with pytest.raises(TypeError, match="not an odtkit History"):
        accuracy_curves({"a": [0.1, 0.2]})
    assert odtkit.viz.accuracy_curves is accuracy_curves
    plt.close("all")


# ---------------------------------------------------------------- checkpoints


def test_interrupted_mid_epoch_resumes_exactly(tmp_path):
    task, path = make_task(), tmp_path / "ckpt" / "run.pt"
    cfg = dict(CONFIG, optimizer="adam", lr=0.01)
    ref = make_model()  # uninterrupted, and writing no checkpoint at all
    ref_hist = train(ref, task, loss_fn=CrossEntropyOrCrash(), progress=False,
                     **dict(NO_CHECKPOINT, optimizer="adam", lr=0.01))  # fmt: skip
    with pytest.raises(Crash):
        train(make_model(), task, loss_fn=CrossEntropyOrCrash(crash_at=23), checkpoint=path,
              progress=False, **cfg)  # fmt: skip
    loop = load_checkpoint(path)["loop"]
    assert (loop["epoch"], loop["step"], loop["global_step"]) == (1, 8, 20)  # mid-epoch 2
    model = make_model()
    hist = train(model, task, loss_fn=CrossEntropyOrCrash(), checkpoint=path, progress=False,
                 **cfg)  # fmt: skip
    assert_same_weights(model, ref)
    assert_same_history(hist, ref_hist)
    # a finished checkpoint: nothing left to do, the same result comes back
    again = make_model()
    assert_same_history(train(again, task, loss_fn=CrossEntropyOrCrash(), checkpoint=path,
                              progress=False, **cfg), ref_hist)  # fmt: skip
    assert_same_weights(again, ref)


def test_mismatched_config_names_the_field(tmp_path):
    task, path = make_task(), tmp_path / "run.pt"
    train(make_model(), task, epochs=1, checkpoint=path, progress=False)
    with pytest.raises(ValueError, match="lr=0.05, but this call has lr=0.1"):
        train(make_model(), task, epochs=1, lr=0.1, checkpoint=path, progress=False)
    with pytest.raises(ValueError, match="seed=0, but this call has seed=1"):
        train(make_model(), task, epochs=1, seed=1, checkpoint=path, progress=False)

    def head_only(model):
        for name, p in model.named_parameters():
            p.requires_grad_(name.startswith("6."))

    frozen = make_model()
    head_only(frozen)
    with pytest.raises(ValueError, match="written with trainable="):
        train(frozen, task, epochs=1, checkpoint=path, progress=False)


def test_channel_sparse_run_resumes_exactly_and_its_channels_are_fingerprinted(tmp_path):
    """Adam + weight decay over a channel-sparse plan: killed mid-epoch and resumed, it ends
    bit-identical to an uninterrupted run, frozen entries untouched; other channels are
    refused at resume."""
    task, path = make_task(), tmp_path / "run.pt"
    plan = odtkit.plan(make_model(), "full", channels={"2.weight": (1, [0, 5, 6, 11]),
                                                      "6.weight": (0, [2])})
    cfg = dict(epochs=2, batch_size=8, lr=0.01, optimizer="adam", weight_decay=0.1, seed=3,
               checkpoint_every=5, progress=False)
    start, ref = make_model().state_dict(), make_model()
    train(ref, task, plan, loss_fn=CrossEntropyOrCrash(), **dict(cfg, checkpoint_every=None))
    with pytest.raises(Crash):
        train(make_model(), task, plan, loss_fn=CrossEntropyOrCrash(crash_at=17),
              checkpoint=path, **cfg)  # fmt: skip
    model = make_model()
    train(model, task, plan, loss_fn=CrossEntropyOrCrash(), checkpoint=path, **cfg)
    assert_same_weights(model, ref)
    for name, keep in plan.masks().items():
        after = model.state_dict()[name]
        assert torch.equal(after[~keep], start[name][~keep]) and not torch.equal(after, start[name])
    other = plan.with_channels({"2.weight": (1, [0, 5, 6])})
    with pytest.raises(ValueError, match="written with plan=.*channels"):
        train(make_model(), task, other, loss_fn=CrossEntropyOrCrash(), checkpoint=path, **cfg)


def test_crash_while_writing_keeps_previous_checkpoint(tmp_path, monkeypatch):
    task, path = make_task(), tmp_path / "run.pt"
    real_save = torch.save

    def half_save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError("disk full")

    def break_saving_after_epoch_1(history, model):
        if len(history) == 1:
            monkeypatch.setattr(torch, "save", half_save)

    with pytest.raises(OSError, match="disk full"):
        train(make_model(), task, epochs=2, checkpoint=path, progress=False,
              callbacks=[break_saving_after_epoch_1])  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.pt"]  # temp file removed
    state = load_checkpoint(path)
    assert state["loop"]["epoch"] == 1 and len(state["history"]["loss"]) == 1
    monkeypatch.setattr(torch, "save", real_save)
    resumed, ref = make_model(), make_model()
    assert_same_history(train(resumed, task, epochs=2, checkpoint=path, progress=False),
                        train(ref, task, epochs=2, progress=False))  # fmt: skip
    assert_same_weights(resumed, ref)


def test_damaged_file_is_reported(tmp_path):
    path = tmp_path / "run.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="could not be read"):
        train(make_model(), make_task(), checkpoint=path, progress=False)
    save_atomic({"format": 999}, path)
    with pytest.raises(ValueError, match="format 999"):
        load_checkpoint(path)


def test_sigkilled_process_resumes_to_the_uninterrupted_result(tmp_path):
    path = tmp_path / "run.pt"
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    # ~0.03 s per step: the kill lands long before the worker's 48 steps are done
    proc = subprocess.Popen([sys.executable, str(WORKER), str(path), "0.03"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    deadline = time.monotonic() + 60
    try:
        while True:
            assert proc.poll() is None, f"worker ended before the kill: {proc.communicate()}"
            assert time.monotonic() < deadline, "no mid-epoch checkpoint within 60 s"
            if path.exists():  # reading while the worker writes: atomic, never half a file
                loop = load_checkpoint(path)["loop"]
                if loop["epoch"] >= 1 and loop["step"] > 0:
                    break
            time.sleep(0.005)
        proc.kill()  # SIGKILL: no cleanup code runs in the worker
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != 0
    loop = load_checkpoint(path)["loop"]
    assert 0 < loop["global_step"] < TOTAL_STEPS, loop
    task = make_task()
    with one_thread():
        resumed = make_model()
        hist = train(resumed, task, checkpoint=path, progress=False, **CONFIG)
        ref = make_model()
        ref_hist = train(ref, task, progress=False, **NO_CHECKPOINT)
    assert_same_weights(resumed, ref)
    assert_same_history(hist, ref_hist)
