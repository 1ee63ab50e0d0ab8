"""The memory estimate of channel-sparse plans and of the plan's norm statistics, against
one measured step.

A channel-sparse conv/linear under the lean engine keeps only the input channels its
selected weight entries need; stock autograd keeps the whole input. Both keep ``.grad``
and the optimizer's state at full size. Estimate and measurement must agree to the byte
in every category, and at the peak where the step's transients are all modeled: a CPU
convolution backward that is asked for the bias gradient can also compute (and hold
until the node returns) the weight gradient, depending on the backend torch picks; the
estimate does not model that, so there the peak is checked to 5 %.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import odtkit as odt
from odtkit.memory import CATEGORIES, MemoryReport, compare

SMALL = {"mcunet-tiny": (3, 16, 16), "mbv2-tiny": (3, 16, 16), "ds-cnn": (10, 25),
         "resnet8": (3, 16, 16), "mlp": (1, 8, 8)}


def _agree(est: MemoryReport, meas: MemoryReport, where: str, exact_peak: bool) -> None:
    assert est.by_category == meas.by_category, (where, est.by_category, meas.by_category)
    if exact_peak:
        assert est.peak_bytes == meas.peak_bytes, (where, est.peak_bytes, meas.peak_bytes)
    assert abs(compare(est, meas)["peak"]) <= 0.05, (where, est.peak_bytes, meas.peak_bytes)
    assert est.frozen_weight_bytes == meas.frozen_weight_bytes, where
    assert all(abs(compare(est, meas)[c]) <= 0.02 for c in CATEGORIES), where


def _both(model, x, plan, optimizer, engine, exact_peak: bool = True
          ) -> tuple[MemoryReport, MemoryReport]:
    est = odt.estimate(model, x, plan, optimizer=optimizer, engine=engine)
    meas = odt.measure(model, x, plan, optimizer=optimizer, engine=engine, rss=False)
    _agree(est, meas, f"{plan.scheme} {engine} {optimizer}", exact_peak)
    return est, meas


def _layers(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear))]


def _ratio_plan(model: nn.Module, last: int, ratio: float) -> odt.TrainPlan:
    """Every bias, and the weights of the last ``last`` conv/linear layers at ``ratio``
    (input channels of full convs and linears, channels of depthwise convs)."""
    with_bias = sum(isinstance(getattr(m, "bias", None), nn.Parameter) for m in model.modules())
    return odt.sparse.plan(model, biases=with_bias,
                           weights={n: ratio for n in _layers(model)[-last:]})


def _entries_plan(model: nn.Module, picks: dict[str, tuple[int, int]]) -> odt.TrainPlan:
    """Biases plus the named layers' weights at every ``step``-th index of ``dim``."""
    params = dict(model.named_parameters())
    channels = {f"{layer}.weight": (dim, range(0, params[f"{layer}.weight"].shape[dim], step))
                for layer, (dim, step) in picks.items()}
    names = [n for n in params if n.endswith("bias")] + list(channels)
    return odt.plan(model, names, channels=channels)


# (model, how the plan is made, engine, optimizer)
ZOO = [
    ("mbv2-tiny", "ratio", "lean", "sgd-m"),
    ("mbv2-tiny", "ratio", "pytorch", "adam"),
    ("mcunet-tiny", "ratio", "lean", "adam"),
    ("ds-cnn", "ratio", "lean", "sgd"),
    ("resnet8", "ratio", "lean", "sgd-m"),
    ("mlp", "ratio", "lean", "adam"),
    ("mcunet-tiny", "out", "lean", "sgd"),
    ("resnet8", "out", "pytorch", "sgd-m"),  # the stem's backward holds a weight gradient
    ("mlp", "out", "lean", "sgd-m"),
]


@pytest.mark.parametrize(("name", "how", "engine", "optimizer"), ZOO)
def test_channel_sparse_estimate_equals_measure_on_the_zoo(name, how, engine, optimizer):
    model = odt.models.create(name, input_shape=SMALL[name]).train()
    x = odt.models.example_input(model, batch_size=2)
    if how == "ratio":
        plan = _ratio_plan(model, 6, 0.25)
    else:  # output channels of the first and a middle layer, input channels of the last
        layers = _layers(model)
        plan = _entries_plan(model, {layers[0]: (0, 2), layers[len(layers) // 2]: (0, 3),
                                     layers[-1]: (1, 2)})
    assert plan.channels
    _both(model, x, plan, optimizer, engine, exact_peak=(name, how) != ("resnet8", "out"))


def test_the_lean_engine_keeps_only_the_selected_input_channels():
    """mbv2-tiny at batch 32, the last 11 conv/linear weights at a quarter of their
    (depthwise: of their own) channels: lean keeps less than the stock engine, and the
    estimate says exactly how much."""
    model = odt.models.create("mbv2-tiny", input_shape=(1, 8, 8)).train()
    x = odt.models.example_input(model, batch_size=32)
    plan = _ratio_plan(model, 11, 0.25)
    lean, _ = _both(model, x, plan, "sgd-m", "lean")
    stock = odt.estimate(model, x, plan, "sgd-m", "pytorch")
    full = odt.estimate(model, x, odt.plan(model, sorted(plan.trainable)), "sgd-m", "lean")
    assert lean.by_category["activations"] < full.by_category["activations"]
    assert full.by_category["activations"] < stock.by_category["activations"]
    # torch keeps gradients and optimizer state full size: the same as without channels
    for cat in ("weights", "gradients", "optimizer"):
        assert lean.by_category[cat] == full.by_category[cat] == stock.by_category[cat]
    assert any("channel-sparse plan" in n for n in lean.notes)


class Grouped(nn.Module):
    """A grouped conv (2 groups of 16 -> 64), a depthwise conv and two linears, on inputs
    small enough that the weights' backward temporaries make the peak."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(3, 32, 1)
        self.grouped = nn.Conv2d(32, 64, 3, padding=1, groups=2)
        self.bn = nn.BatchNorm2d(64)
        self.dw = nn.Conv2d(64, 64, 3, padding=1, groups=64)
        self.fc1 = nn.Linear(64 * 9, 200)
        self.fc2 = nn.Linear(200, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.grouped(self.stem(x))))
        x = torch.relu(self.dw(x)).flatten(1)
        return self.fc2(torch.relu(self.fc1(x)))


# (selections, input channels kept by the layer that has them, of how many, exact peak);
# without a row or column cut the grouped conv's weight gradient comes from a second
# backward call while the first call's unasked weight gradient is still held (see above)
CUTS = [
    ({"grouped.weight": [(0, [1, 2]), (1, [0, 3, 5])]}, ("grouped", 3, 32, True)),  # 1 group
    ({"grouped.weight": [(0, [1, 40]), (1, [0, 3, 5])]}, ("grouped", 6, 32, True)),  # both
    ({"grouped.weight": (0, [1, 40])}, ("grouped", 32, 32, False)),  # both groups: all kept
    ({"grouped.weight": (0, [1, 2, 3])}, ("grouped", 16, 32, True)),  # one group, all columns
    ({"grouped.weight": (2, [0])}, ("grouped", 32, 32, False)),  # a kernel row: all kept
    ({"dw.weight": (0, [0, 9, 17])}, ("dw", 3, 64, True)),
    ({"fc1.weight": (1, range(0, 576, 4))}, ("fc1", 144, 576, True)),
    ({"fc1.weight": (0, [3, 4])}, ("fc1", 576, 576, True)),
    ({"bn.weight": (0, [1, 2]), "grouped.bias": (0, [5])}, ("grouped", 32, 32, False)),
]


@pytest.mark.parametrize(("selections", "kept"), CUTS)
def test_kept_bytes_and_backward_temporaries_by_hand(selections, kept):
    """Small inputs, so the weights' backward temporaries make the peak."""
    model = Grouped().train()
    x = torch.randn(1, 3, 3, 3)
    names = ["stem.bias", "grouped.weight", "grouped.bias", "bn.weight", "dw.weight",
             "fc1.weight", "fc2.bias"]
    plan = odt.plan(model, names, channels=selections)
    layer, channels, of, exact = kept
    for optimizer in ("sgd", "sgd-m"):
        est, meas = _both(model, x, plan, optimizer, "lean", exact)
    in_bytes = {"grouped": 32 * 9 * 4, "dw": 64 * 9 * 4, "fc1": 576 * 4}[layer]
    saved = {r.name: r.saved_bytes for r in est.rows}
    assert saved[layer] == in_bytes * channels // of
    assert {r.name: r.saved_bytes for r in meas.rows}[layer] == saved[layer]


def test_the_stock_engine_keeps_whole_inputs_whatever_the_channels():
    model = odt.models.create("mcunet-tiny", input_shape=SMALL["mcunet-tiny"]).train()
    x = odt.models.example_input(model, batch_size=2)
    plan = _ratio_plan(model, 4, 0.25)
    whole = odt.plan(model, sorted(plan.trainable))
    a = odt.estimate(model, x, plan, "sgd", "pytorch")
    b = odt.estimate(model, x, whole, "sgd", "pytorch")
    assert a.by_category == b.by_category and a.peak_bytes == b.peak_bytes


def test_channel_sparse_at_bf16_and_fp16_on_the_stock_engine():
    model = odt.models.create("mbv2-tiny", input_shape=SMALL["mbv2-tiny"]).train()
    x = odt.models.example_input(model, batch_size=2)
    for precision in ("bf16", "fp16"):
        plan = odt.sparse.plan(model, biases=3, precision=precision,
                               weights={n: 0.25 for n in _layers(model)[-6:]})
        _both(model, x, plan, "sgd-m", "pytorch")


def test_notes_give_the_selected_entries_only_counts():
    model = odt.models.create("mlp", input_shape=SMALL["mlp"])
    x = odt.models.example_input(model, batch_size=2)
    plan = odt.plan(model, ["1.weight"], channels={"1.weight": (1, range(16))})  # 16 of 64
    est = odt.estimate(model, x, plan, "sgd-m", "lean")
    assert est.by_category["gradients"] == est.by_category["optimizer"] == 128 * 64 * 4
    text = " ".join(est.notes)
    assert "2,048 of 8,192 trainable elements" in text and "8 KiB and 8 KiB" in text
    assert "channel masks: 64 B" in text
    assert not odt.estimate(model, x, "full", "sgd", "lean").notes


# ---------------------------------------------------------------- norm statistics


def test_frozen_norm_statistics_keep_far_less_under_the_lean_engine():
    """Bias-only on mcunet-tiny: frozen statistics let a frozen BatchNorm's backward keep
    nothing, so the lean step keeps far fewer activation bytes than with batch
    statistics; estimate and measure agree in both modes and leave the model's modes."""
    model = odt.models.create("mcunet-tiny").train()
    x = odt.models.example_input(model, batch_size=4)
    acts = {}
    for stats in ("batch", "frozen"):
        plan = odt.plan(model, "bias-only", norm_stats=stats)
        for engine in ("pytorch", "lean"):
            est, _ = _both(model, x, plan, "sgd", engine)
            acts[stats, engine] = est.by_category["activations"]
        assert all(m.training for m in model.modules())
    batch = acts["batch", "pytorch"] / acts["batch", "lean"]
    frozen = acts["frozen", "pytorch"] / acts["frozen", "lean"]
    assert 2 < batch < 4 and frozen > 50, (batch, frozen)
    assert acts["frozen", "lean"] * 20 < acts["batch", "lean"]


def test_an_eval_mode_model_steps_as_it_is():
    model = odt.models.create("mcunet-tiny", input_shape=SMALL["mcunet-tiny"]).eval()
    x = odt.models.example_input(model, batch_size=2)
    frozen = odt.plan(model, "bias-only", norm_stats="frozen")
    batch = odt.plan(model, "bias-only", norm_stats="batch")
    a = odt.estimate(model, x, frozen, "sgd", "lean")
    b = odt.estimate(model, x, batch, "sgd", "lean")
    assert a.by_category == b.by_category
    assert not any(m.training for m in model.modules())
