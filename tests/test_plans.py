"""Train plans: each scheme's trainable set against a hand-written list, apply_, errors."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import nn

import odtkit as odt
from odtkit import models, plans


class Block(nn.Module):
    """A residual block (its own class, two convs): what recompute='blocks' finds."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(c, c, 1), nn.BatchNorm2d(c), nn.ReLU(),
                                  nn.Conv2d(c, c, 3, padding=1, groups=c, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class Small(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 4, 3, bias=False),  # features.0
            nn.BatchNorm2d(4),               # features.1
            nn.ReLU6(),
            Block(4),                        # features.3
        )
        self.norm = nn.LayerNorm(4)
        self.gn = nn.GroupNorm(2, 4)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.gn(self.features(x)).mean((2, 3))
        return self.fc(self.norm(x))


ALL = [
    "features.0.weight", "features.1.weight", "features.1.bias",
    "features.3.body.0.weight", "features.3.body.0.bias",
    "features.3.body.1.weight", "features.3.body.1.bias", "features.3.body.3.weight",
    "norm.weight", "norm.bias", "gn.weight", "gn.bias", "fc.weight", "fc.bias",
]
# layers in registration order: features.0, features.1, features.3.body.0,
# features.3.body.1, features.3.body.3, norm, gn, fc
EXPECTED = {
    "full": set(ALL),
    "none": set(),
    "bias-only": {"features.1.bias", "features.3.body.0.bias", "features.3.body.1.bias",
                  "norm.bias", "gn.bias", "fc.bias"},
    "norm-only": {"features.1.weight", "features.1.bias", "features.3.body.1.weight",
                  "features.3.body.1.bias", "norm.weight", "norm.bias", "gn.weight", "gn.bias"},
    "last:1": {"fc.weight", "fc.bias"},
    "last:2": {"gn.weight", "gn.bias", "fc.weight", "fc.bias"},
    "last:4": {"features.3.body.3.weight", "norm.weight", "norm.bias", "gn.weight",
               "gn.bias", "fc.weight", "fc.bias"},
    "last:8": set(ALL),
}


@pytest.fixture
def model() -> nn.Module:
    torch.manual_seed(0)
    return Small()


@pytest.mark.parametrize("scheme", list(EXPECTED))
def test_scheme_trainable_sets(model: nn.Module, scheme: str) -> None:
    p = odt.plan(model, scheme)
    assert p.trainable == frozenset(EXPECTED[scheme])
    assert p.names == tuple(ALL)
    params = dict(model.named_parameters())
    want = sum(params[n].numel() for n in EXPECTED[scheme])
    assert p.trainable_numel == want
    assert p.total_numel == sum(q.numel() for q in model.parameters())
    assert math.isclose(p.trainable_share, want / p.total_numel)


def test_scheme_spelling_is_forgiving(model: nn.Module) -> None:
    assert odt.plan(model, "Bias_Only").trainable == odt.plan(model, "bias-only").trainable
    assert odt.plan(model, "LAST = 2").scheme == "last:2"


def test_layers_count_batchnorm_as_its_own_layer(model: nn.Module) -> None:
    names = [name for name, _ in plans.layers(model)]
    assert names == ["features.0", "features.1", "features.3.body.0", "features.3.body.1",
                     "features.3.body.3", "norm", "gn", "fc"]


def test_shared_parameter_counts_once() -> None:
    a, b = nn.Linear(3, 3), nn.Linear(3, 3)
    b.weight = a.weight  # tied
    model = nn.Sequential(a, b)
    assert [n for _, n in plans.layers(model)] == [("0.weight", "0.bias"), ("1.bias",)]
    assert odt.plan(model, "last:1").trainable == {"1.bias"}


def test_names_and_predicate(model: nn.Module) -> None:
    p = odt.plan(model, ["fc.weight", "fc.bias"])
    assert p.trainable == {"fc.weight", "fc.bias"} and p.scheme == "names"
    assert plans.from_names(model, ("fc.bias",)).trainable == {"fc.bias"}
    q = odt.plan(model, lambda name, param: param.dim() == 1 and name.startswith("features"))
    assert q.trainable == {"features.1.weight", "features.1.bias", "features.3.body.0.bias",
                           "features.3.body.1.weight", "features.3.body.1.bias"}
    assert q.scheme == "predicate"


def test_apply_sets_requires_grad_and_returns_model(model: nn.Module) -> None:
    p = odt.plan(model, "bias-only")
    assert p.apply_(model) is model
    assert {n for n, q in model.named_parameters() if q.requires_grad} == EXPECTED["bias-only"]
    odt.plan(model, "full").apply_(model)
    assert all(q.requires_grad for q in model.parameters())


def test_apply_to_another_model_names_the_difference(model: nn.Module) -> None:
    p = odt.plan(model, "full")
    other = nn.Sequential(nn.Linear(4, 3))
    with pytest.raises(ValueError, match=r"missing from this model: features\.0\.weight"):
        p.apply_(other)
    with pytest.raises(ValueError, match=r"not in the plan: 0\.weight"):
        p.apply_(other)
    wider = Small()
    wider.fc = nn.Linear(4, 5)
    with pytest.raises(ValueError, match=r"fc\.weight \(5, 4\) \(plan: \(3, 4\)\)"):
        p.apply_(wider)


def test_plan_is_immutable_and_validated(model: nn.Module) -> None:
    p = odt.plan(model, "full")
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.precision = "fp16"  # type: ignore[misc]
    with pytest.raises(ValueError, match="not parameters"):
        dataclasses.replace(p, trainable=frozenset({"nope"}))
    with pytest.raises(ValueError, match="unknown precision"):
        dataclasses.replace(p, precision="fp8")
    assert p == odt.plan(model, "full") and hash(p) == hash(odt.plan(model, "full"))


def test_describe_table(model: nn.Module) -> None:
    p = odt.plan(model, "last:1", precision="bf16")
    text = p.describe()
    lines = text.splitlines()
    assert lines[0] == ("TrainPlan 'last:1': precision bf16, norm statistics frozen, "
                        "recompute none")
    rows = lines[3:-1]
    assert [r.split()[0] for r in rows] == ALL
    fc = next(r for r in rows if r.startswith("fc.weight"))
    assert "(3, 4)" in fc and fc.rstrip().endswith("yes")
    assert next(r for r in rows if r.startswith("gn.bias")).rstrip().endswith("no")
    # numel column right-aligned: every row's numel ends at the same column
    ends = {r.index(" yes") if r.endswith("yes") else r.index(" no") for r in rows}
    assert len(ends) == 1
    total = sum(q.numel() for q in model.parameters())
    share = 100 * 15 / total
    assert lines[-1] == f"trainable 15 of {total:,} parameters ({share:.1f}%) in 2 of 14 tensors"
    html = p._repr_html_()
    assert html.count("<tr>") == 15 and "fc.weight" in html
    assert "15/" in repr(p) and "'last:1'" in repr(p)


def test_scheme_names_ignore_case_and_separators(model: nn.Module) -> None:
    biases = {n for n, _ in model.named_parameters() if n.endswith(".bias")}
    for spelling in ("bias-only", "Bias Only", "BIAS_ONLY"):
        p = odt.plan(model, spelling)
        assert p.scheme == "bias-only" and p.trainable == biases
    assert odt.plan(model, "Norm-Only").scheme == "norm-only"


def test_bad_schemes(model: nn.Module) -> None:
    with pytest.raises(ValueError, match=r"unknown scheme 'bias-onyl'.*'bias-only'.*Valid"):
        odt.plan(model, "bias-onyl")
    with pytest.raises(ValueError, match="pass a list"):
        odt.plan(model, "fc.weight")
    with pytest.raises(ValueError, match="has only 8 layers with parameters"):
        odt.plan(model, "last:9")
    with pytest.raises(ValueError, match="at least 1"):
        odt.plan(model, "last:0")
    for bad in ("last:1.5", "last:two", "last:"):
        with pytest.raises(ValueError, match="K must be a positive integer"):
            odt.plan(model, bad)
    with pytest.raises(ValueError, match=r"unknown parameter 'fc.wieght'.*'fc.weight'"):
        odt.plan(model, ["fc.wieght"])
    for spelling in ("last-k", "LastK"):  # the scheme's name without its number
        with pytest.raises(ValueError, match=rf"scheme '{spelling}' needs the number of layers.*"
                                             r"'last:2'"):
            odt.plan(model, spelling)
    with pytest.raises(TypeError, match="True or False"):
        odt.plan(model, lambda name, param: 1)
    with pytest.raises(TypeError, match="scheme must be"):
        odt.plan(model, 3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="list of parameter names"):
        plans.from_names(model, "fc.weight")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="torch.nn.Module"):
        odt.plan("model", "full")  # type: ignore[arg-type]


def test_precision(model: nn.Module) -> None:
    for prec in plans.PRECISIONS:
        assert odt.plan(model, "full", precision=prec).precision == prec
    with pytest.raises(ValueError, match=r"unknown precision 'bf61'.*fp32, bf16, fp16, fp8-e4m3, fp8-e5m2, int8"):
        odt.plan(model, "full", precision="bf61")


def test_recompute_names(model: nn.Module) -> None:
    p = odt.plan(model, "full", recompute=("features.3", "features.0"))
    assert p.recompute == ("features.0", "features.3")  # model order
    assert odt.plan(model, "full", recompute="features.3").recompute == ("features.3",)
    assert odt.plan(model, "full", recompute="blocks").recompute == ("features.3",)
    with pytest.raises(ValueError, match=r"unknown module to recompute 'feature.3'.*'features.3'"):
        odt.plan(model, "full", recompute=["feature.3"])
    with pytest.raises(ValueError, match="submodule"):
        odt.plan(model, "full", recompute=["features", "features.3"])
    with pytest.raises(ValueError, match="twice"):
        odt.plan(model, "full", recompute=["fc", "fc"])
    with pytest.raises(ValueError, match="whole model"):
        odt.plan(model, "full", recompute=[""])
    with pytest.raises(ValueError, match="found no blocks"):
        odt.plan(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)), "full", recompute="blocks")


def test_blocks_of_the_zoo() -> None:
    mbv2 = models.create("mbv2-tiny")
    n_blocks = len(mbv2.blocks)
    assert plans.find_blocks(mbv2) == tuple(f"blocks.{i}" for i in range(n_blocks))
    # a tuple names modules: ("blocks",) is the container called "blocks"
    assert odt.plan(mbv2, "none", recompute=("blocks",)).recompute == ("blocks",)
    assert plans.find_blocks(models.create("resnet8")) == ("blocks.0", "blocks.1", "blocks.2")
    assert plans.find_blocks(models.create("ds-cnn")) == ()  # Sequential blocks only


def test_training_accepts_a_plan(model: nn.Module) -> None:
    p = odt.plan(model, "norm-only")
    p.apply_(model)
    x = torch.randn(2, 3, 6, 6)
    model(x).sum().backward()
    got = {n for n, q in model.named_parameters() if q.grad is not None}
    assert got == EXPECTED["norm-only"]


def test_activation_grad_is_a_checked_plan_field():
    model = nn.Sequential(nn.Linear(3, 4), nn.Hardswish(), nn.Linear(4, 2))
    p = odt.plan(model, "bias-only")
    assert p.activation_grad == "exact"
    q = p.with_activation_grad("mobiletl")
    assert q.activation_grad == "mobiletl" and p.activation_grad == "exact"
    assert q.trainable == p.trainable and "mobiletl" in q.describe() and "mobiletl" in repr(q)
    with pytest.raises(ValueError, match="activation_grad 'approx'.*exact, mobiletl"):
        p.with_activation_grad("approx")


# ---------------------------------------------------------------- schemes by role


class Seq2Label(nn.Module):
    """A 2-layer bidirectional LSTM, a transformer block and a head: roles beyond conv nets."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.LSTM(4, 6, num_layers=2, bidirectional=True, batch_first=True)
        self.block = nn.TransformerEncoderLayer(12, 2, 16, batch_first=True)
        self.head = nn.Linear(12, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(self.rnn(x)[0]).mean(1))


def test_bias_only_takes_every_bias_vector() -> None:
    trainable = odt.plan(Seq2Label(), "bias-only").trainable
    # written out by hand: the recurrent biases of both layers and directions, the
    # attention's packed input projection bias, and every module bias
    rnn = {f"rnn.bias_{g}_l{k}{d}" for g in ("ih", "hh") for k in (0, 1) for d in ("", "_reverse")}
    block = {"block.self_attn.in_proj_bias", "block.self_attn.out_proj.bias",
             "block.linear1.bias", "block.linear2.bias", "block.norm1.bias", "block.norm2.bias"}
    assert trainable == rnn | block | {"head.bias"}


def test_last_k_counts_rnn_layers_and_transformer_blocks() -> None:
    model = Seq2Label()
    assert [name for name, _ in plans.layers(model)] == [
        "rnn (layer 0)", "rnn (layer 1)", "block", "head"]
    last2 = odt.plan(model, "last:2").trainable
    assert last2 == {n for n, _ in model.named_parameters() if n.startswith(("block.", "head."))}
    last3 = odt.plan(model, "last:3").trainable - last2
    assert last3 == {f"rnn.{w}_l1{d}" for w in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
                     for d in ("", "_reverse")}
    with pytest.raises(ValueError, match="only 4 layers"):
        odt.plan(model, "last:5")
