"""TrainConfig: validated once with the shared checks, frozen, the fingerprint of a resume,
and an alternative to train's keywords that gives the same numbers."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from _train_worker import make_model, make_task

import odtkit as odt
from odtkit.training import TrainConfig, train


def test_defaults_and_conversion():
    cfg = TrainConfig(lr=1, seed=torch.tensor(3).item(), epochs=2)
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float) and cfg.seed == 3
    assert odt.TrainConfig is TrainConfig
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.lr = 0.1  # type: ignore[misc]


@pytest.mark.parametrize(("kwargs", "error", "message"), [
    ({"lr": math.nan}, ValueError, r"lr must be a finite number in \(0, inf\), got lr=nan"),
    ({"lr": 0}, ValueError, "got lr=0"),
    ({"lr": "0.1"}, TypeError, "got lr='0.1'"),
    ({"momentum": math.inf}, ValueError, r"momentum must be a finite number in \[0, 1\)"),
    ({"weight_decay": -1}, ValueError, r"weight_decay must be a finite number in \[0, inf\)"),
    ({"seed": -1}, ValueError, "seed must be a non-negative integer, got seed=-1"),
    ({"seed": True}, ValueError, "got seed=True"),
    ({"batch_size": 0}, ValueError, "batch_size must be a positive integer"),
    ({"epochs": 1.0}, ValueError, "got epochs=1.0"),
    ({"optimizer": "adamw"}, ValueError, "Did you mean 'adam'"),
    ({"max_steps": -3}, ValueError, "got max_steps=-3"),
    ({"checkpoint_every": 0}, ValueError, "got checkpoint_every=0"),
    ({"drop_last": 1}, TypeError, "drop_last must be True or False"),
])
def test_bad_values_are_named(kwargs, error, message):
    with pytest.raises(error, match=message):
        TrainConfig(**kwargs)


def test_fingerprint_leaves_out_what_does_not_change_the_numbers():
    a = TrainConfig(checkpoint_every=5, eval_batch_size=64)
    assert a.fingerprint() == TrainConfig().fingerprint()
    assert set(a.fingerprint()) == {"epochs", "batch_size", "lr", "optimizer", "momentum",
                                    "weight_decay", "seed", "drop_last", "max_steps",
                                    "precision", "qas", "rounding"}
    assert TrainConfig().fingerprint()["precision"] == "fp32"  # None runs as fp32
    assert TrainConfig(epochs=3, max_steps=7).total_steps(3) == 7
    assert TrainConfig(epochs=3).total_steps(3) == 9


def test_config_gives_the_same_run_as_keywords():
    task = make_task()
    kw = dict(epochs=2, batch_size=8, lr=0.03, optimizer="adam", seed=4)
    a, b = make_model(), make_model()
    ha = train(a, task, progress=False, **kw)
    hb = train(b, task, progress=False, config=TrainConfig(**kw))
    assert ha.loss == hb.loss and ha.test_acc == hb.test_acc
    for x, y in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(x, y)
    with pytest.raises(TypeError, match="lr= both in config and as a keyword"):
        train(make_model(), task, config=TrainConfig(**kw), lr=0.1, progress=False)
    with pytest.raises(TypeError, match="config must be an odt.TrainConfig"):
        train(make_model(), task, config=kw, progress=False)


def test_the_loop_core_refuses_uneven_worker_shards():
    with pytest.raises(ValueError, match="2 workers share equal shards.*drop_last=True"):
        odt.training.Loop(make_model(), make_task(), TrainConfig(), workers=2)
