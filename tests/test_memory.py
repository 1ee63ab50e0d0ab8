"""The analytic memory estimate against one real, measured training step.

The reference is the measurement: autograd's saved-tensor hooks for activations, the
optimizer's own state after a real step, and live storages tracked op by op for the peak.
Categories must agree within 2 %, peaks within 10 %, on every zoo model and on two
models written outside the zoo.
"""

from __future__ import annotations

import copy
import itertools
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import odtkit as odt
from odtkit import memory
from odtkit.memory import CATEGORIES, MemoryReport, UnsupportedOperation, compare

SCHEMES = ("full", "last:2", "bias-only", "norm-only")
ENGINES = ("pytorch", "lean")
# small inputs keep the grid fast; every model accepts them
SMALL = {"mcunet-tiny": (3, 16, 16), "mbv2-tiny": (3, 16, 16), "ds-cnn": (10, 25),
         "resnet8": (3, 16, 16), "mlp": (1, 8, 8)}


def _check_agree(est: MemoryReport, meas: MemoryReport, where: str) -> None:
    errors = compare(est, meas)
    for cat in CATEGORIES:
        assert abs(errors[cat]) <= 0.02, (where, cat, est.by_category, meas.by_category)
    assert abs(errors["peak"]) <= 0.10, (where, est.peak_bytes, meas.peak_bytes)
    assert est.frozen_weight_bytes == meas.frozen_weight_bytes, where
    assert est.forward_macs == meas.forward_macs and est.backward_macs == meas.backward_macs


# every (model, scheme, engine); optimizer and BN mode rotate so all of them are covered
GRID = [(m, s, e, opt, train) for (m, s, e), opt, train in zip(
    itertools.product(SMALL, SCHEMES, ENGINES), itertools.cycle(("sgd", "sgd-m", "adam")),
    itertools.cycle((True, True, False)))]


@pytest.mark.parametrize(("name", "scheme", "engine", "optimizer", "train"), GRID)
def test_estimate_matches_measure_on_the_zoo(name, scheme, engine, optimizer, train):
    model = odt.models.create(name, input_shape=SMALL[name]).train(train)
    x = odt.models.example_input(model, batch_size=2)
    est = odt.estimate(model, x, scheme, optimizer=optimizer, engine=engine)
    meas = odt.measure(model, x, scheme, optimizer=optimizer, engine=engine, rss=False)
    _check_agree(est, meas, f"{name} {scheme} {engine} {optimizer} train={train}")


def depthwise_sequential() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(),
        nn.Conv2d(8, 8, 3, 1, 1, groups=8), nn.BatchNorm2d(8), nn.ReLU6(),
        nn.Conv2d(8, 16, 1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Conv2d(16, 16, 3, 1, 1, groups=16, bias=False), nn.Hardtanh(0.0, 6.0, inplace=True),
        nn.AvgPool2d(2), nn.Flatten(), nn.Dropout(0.2), nn.Linear(16 * 2 * 2, 10))


class FunctionalResidual(nn.Module):
    """A residual block whose activations, add, pooling and concat are functional calls."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.conv1 = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem(x))
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        x = F.relu(out + x)
        x = F.max_pool2d(x, 2)
        pooled = F.adaptive_avg_pool2d(x, 1)  # (B, 16, 1, 1)
        means = torch.flatten(x, 2).mean(-1, keepdim=True).unsqueeze(-1)
        return self.fc(torch.flatten(torch.cat([pooled, means], 1), 1))


@pytest.mark.parametrize("make", [depthwise_sequential, FunctionalResidual])
@pytest.mark.parametrize("train", [True, False])
def test_estimate_matches_measure_outside_the_zoo(make, train):
    model = make().train(train)
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    for (scheme, engine), optimizer in zip(itertools.product(SCHEMES, ENGINES),
                                           itertools.cycle(("sgd", "adam"))):
        est = odt.estimate(model, x, scheme, optimizer=optimizer, engine=engine)
        meas = odt.measure(model, x, scheme, optimizer=optimizer, engine=engine, rss=False)
        _check_agree(est, meas, f"{make.__name__} {scheme} {engine}")


@pytest.mark.parametrize("name", ["mbv2-tiny", "resnet8"])
def test_recomputed_blocks_keep_only_their_inputs(name):
    model = odt.models.create(name, input_shape=(3, 16, 16)).eval()
    x = odt.models.example_input(model, batch_size=2)
    for scheme, recompute in [("full", "blocks"), ("bias-only", "blocks"),
                              ("last:2", "blocks"), ("full", odt.plans.find_blocks(model)[:1])]:
        plan = odt.plan(model, scheme, recompute=recompute)
        est = odt.estimate(model, x, plan, engine="lean")
        meas = odt.measure(model, x, plan, engine="lean", rss=False)
        _check_agree(est, meas, f"{name} {scheme} recompute={recompute}")
        checkpoint_rows = [r for r in est.rows if r.type == "checkpoint"]
        assert [r.name for r in checkpoint_rows] == [f"{b} (checkpoint)" for b in plan.recompute]
        assert {r.name: r.saved_bytes for r in meas.rows if r.name.endswith("(checkpoint)")} \
            == {r.name: r.saved_bytes for r in checkpoint_rows}
    plain = odt.estimate(model, x, "full", engine="lean")
    rec = odt.estimate(model, x, odt.plan(model, "full", recompute="blocks"), engine="lean")
    assert rec.by_category["activations"] < plain.by_category["activations"] / 2
    # stock autograd has no checkpoints: the plan's recompute does not apply to it
    stock = odt.estimate(model, x, odt.plan(model, "full", recompute="blocks"))
    assert stock == odt.estimate(model, x, "full")


def _grads(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    logits = model(x)
    F.cross_entropy(logits, torch.arange(len(x)) % logits.shape[1]).backward()
    return {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


def test_lean_bias_only_saves_ten_times_less_with_the_same_gradients():
    # fine-tuning with frozen BatchNorm statistics (eval mode), as bias-only transfer does
    model = odt.models.create("mbv2-tiny").eval()
    x = odt.models.example_input(model, batch_size=8)
    plan = odt.plan(model, "bias-only")
    stock = odt.measure(model, x, plan, engine="pytorch", rss=False)
    lean = odt.measure(model, x, plan, engine="lean", rss=False)
    ratio = stock.by_category["activations"] / lean.by_category["activations"]
    assert ratio >= 10, ratio
    est = odt.estimate(model, x, plan, engine="lean")
    assert compare(est, lean)["activations"] == 0.0
    # FACTS.md: stock bias-only keeps almost everything full training keeps
    full = odt.measure(model, x, "full", rss=False).by_category["activations"]
    assert stock.by_category["activations"] >= 0.95 * full
    reference = _grads(plan.apply_(copy.deepcopy(model)), x)
    got = _grads(odt.lean(model, plan), x)
    assert reference.keys() == got.keys() == plan.trainable
    for name in reference:
        torch.testing.assert_close(got[name], reference[name], atol=1e-5, rtol=1e-5)


def test_hand_computed_conv_relu_linear():
    # conv 3->4 (3x3, pad 1) on 2x3x8x8, ReLU, flatten, linear 256->5, batch 2, float32
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(256, 5))
    x = torch.randn(2, 3, 8, 8)
    x_bytes, relu_bytes = 2 * 3 * 8 * 8 * 4, 2 * 4 * 8 * 8 * 4
    full = odt.estimate(model, x, "full")
    # conv keeps x; ReLU keeps its output, which the linear keeps too (one storage)
    assert full.by_category["activations"] == x_bytes + relu_bytes
    assert full.by_category["weights"] == 4 * (4 * 3 * 9 + 4 + 5 * 256 + 5)
    lean_last = odt.estimate(model, x, "last:1", engine="lean")
    assert lean_last.by_category["activations"] == relu_bytes  # the linear's weight trains
    lean_bias = odt.estimate(model, x, "bias-only", engine="lean")
    assert lean_bias.by_category["activations"] == 2 * 4 * 8 * 8 // 8  # one bit per element
    adam = odt.estimate(model, x, "full", optimizer="adam")
    n_params = sum(p.numel() for p in model.parameters())
    assert adam.by_category["optimizer"] == 2 * 4 * n_params + 4 * 4  # + a step per tensor


@pytest.mark.parametrize("scheme", ["full", "bias-only", "last:1", "last:2", "none"])
def test_macs_match_pytorchs_flop_counter(scheme):
    """PyTorch's FlopCounterMode counts the convolutions and matmuls autograd really runs
    (2 FLOP per MAC): the first conv computes no input gradient, a frozen weight no weight
    gradient, and nothing before the first trainable layer any gradient at all."""
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(8, 4, 3, stride=2), nn.Flatten(), nn.Linear(36, 5))
    x = torch.randn(2, 3, 8, 8)
    plan = odt.plan(model, scheme)
    est, meas = odt.estimate(model, x, plan), odt.measure(model, x, plan, rss=False)
    work = plan.apply_(copy.deepcopy(model))
    with FlopCounterMode(display=False) as forward:
        loss = F.cross_entropy(work(x), torch.arange(2))
    with FlopCounterMode(display=False) as backward:
        if loss.requires_grad:
            loss.backward()
    assert 2 * est.forward_macs == 2 * meas.forward_macs == forward.get_total_flops()
    assert 2 * est.backward_macs == 2 * meas.backward_macs == backward.get_total_flops()


def test_optimizer_state_matches_torch():
    model = odt.models.create("mlp")
    x = odt.models.example_input(model, batch_size=2)
    for name in odt.OPTIMIZERS:
        work = odt.plan(model, "last:2").apply_(copy.deepcopy(model))
        opt = odt.make_optimizer(name, work.parameters(), lr=0.1)
        _grads(work, x)
        opt.step()
        state = {t.untyped_storage()._cdata: t.untyped_storage().nbytes()
                 for s in opt.state.values() for t in s.values() if isinstance(t, torch.Tensor)}
        est = odt.estimate(model, x, "last:2", optimizer=name)
        assert est.by_category["optimizer"] == sum(state.values()), name


def test_measure_leaves_the_model_alone():
    model = odt.models.create("resnet8", input_shape=(3, 8, 8))
    before = copy.deepcopy(model.state_dict())
    flags = [p.requires_grad for p in model.parameters()]
    x = odt.models.example_input(model, batch_size=2)
    odt.measure(model, x, "bias-only", optimizer="adam", rss=False)
    odt.measure(model, x, "bias-only", engine="lean", rss=False)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())


def test_same_call_same_numbers_and_rss():
    model = odt.models.create("mbv2-tiny", input_shape=(3, 16, 16))
    x = odt.models.example_input(model, batch_size=2)
    a = odt.measure(model, x, "full", rss=True)
    b = odt.measure(model, x, "full", rss=False)
    assert (a.by_category, a.peak_bytes) == (b.by_category, b.peak_bytes)
    # the process holds the interpreter and libraries, far more than the step's tensors
    assert a.rss_peak_bytes > a.peak_bytes and b.rss_peak_bytes is None
    assert odt.estimate(model, x, "full") == odt.estimate(model, x, "full")


def test_trace_cache_follows_mode_and_shape():
    model = odt.models.create("mbv2-tiny", input_shape=(3, 16, 16))
    x = odt.models.example_input(model, batch_size=2)
    train = odt.estimate(model, x, "norm-only", engine="lean").by_category["activations"]
    model.eval()  # frozen statistics: no longer the same graph
    plan = odt.plan(model, "bias-only")
    evaluated = odt.estimate(model, x, plan, engine="lean").by_category["activations"]
    assert evaluated < train
    bigger = odt.estimate(model, odt.models.example_input(model, 4), plan, engine="lean")
    assert bigger.by_category["activations"] == 2 * evaluated


def test_plan_none_is_inference():
    model = odt.models.create("mbv2-tiny", input_shape=(3, 16, 16))
    x = odt.models.example_input(model, batch_size=2)
    est, meas = odt.estimate(model, x, "none"), odt.measure(model, x, "none", rss=False)
    assert est.by_category == meas.by_category
    assert est.by_category["gradients"] == est.by_category["activations"] == 0
    assert est.peak_bytes == meas.peak_bytes < odt.estimate(model, x, "full").peak_bytes


# ---------------------------------------------------------------- errors name the problem


class TwoUnsupported(nn.Module):
    """A cumulative sum inside a submodule and a flip in the model's own forward: two ops
    the memory model has no rule for."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 4)
        self.scan = Scan()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scan(self.fc(x)).flip(1)


class Scan(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.cumsum(1)


def test_unsupported_operations_are_all_named_in_one_error():
    with pytest.raises(UnsupportedOperation) as err:
        odt.estimate(TwoUnsupported(), torch.randn(2, 8), "full")
    text = str(err.value)
    assert "2 operations" in text
    assert re.search(r"aten\.cumsum in \S*Scan \(in module 'scan'\)", text), text
    assert re.search(r"aten\.flip in the forward of TwoUnsupported", text), text
    # measure still works where the estimate gives up
    meas = odt.measure(TwoUnsupported(), torch.randn(2, 8), "full", rss=False)
    assert meas.by_category["gradients"] == 4 * (8 * 4 + 4)


def test_bad_inputs_explain_the_fix():
    model = odt.models.create("mbv2-tiny")
    x = odt.models.example_input(model, batch_size=2)
    with pytest.raises(ValueError, match=r"expects \(batch, 3, 32, 32\)"):
        odt.estimate(model, torch.randn(2, 3, 28, 28), "full")
    with pytest.raises(ValueError, match=r"expects \(batch, 3, 32, 32\)"):
        odt.measure(model, torch.randn(2, 1, 32, 32), "full")
    with pytest.raises(ValueError, match="'adamw'.*adam.*sgd, sgd-m, adam"):
        odt.estimate(model, x, "full", optimizer="adamw")
    with pytest.raises(ValueError, match="'leen'.*pytorch, lean"):
        odt.measure(model, x, "full", engine="leen")
    with pytest.raises(ValueError, match="unknown scheme 'bias-onlyy'"):
        odt.estimate(model, x, "bias-onlyy")
    with pytest.raises(TypeError, match="TrainPlan"):
        odt.estimate(model, x, 3)
    with pytest.raises(ValueError, match="different model"):
        odt.estimate(model, x, odt.plan(odt.models.create("mlp"), "full"))
    plain = nn.Sequential(nn.Flatten(), nn.Linear(10, 4))  # no input_shape: torch explains
    with pytest.raises(ValueError, match=r"shape \(2, 12\).*2x12 and 10x4"):
        odt.estimate(plain, torch.randn(2, 12), "full")
    with pytest.raises(ValueError, match="already made lean"):
        odt.estimate(odt.lean(model, "full"), x, "full")
    with pytest.raises(ValueError, match="'int8' needs the int8 graph.*to_int8"):
        odt.estimate(model, x, odt.plan(model, "full", precision="int8"))
    half = copy.deepcopy(model).half()
    with pytest.raises(ValueError, match="float32 master weights.*model.float"):
        odt.measure(half, x.half(), odt.plan(half, "full", precision="fp16"))


@pytest.mark.parametrize("dtype", [torch.int64, torch.uint8, torch.bool, torch.float64,
                                   torch.float16])
def test_an_input_dtype_the_model_cannot_run_is_refused(dtype):
    """The estimate never runs the model's arithmetic, and meta kernels do not check dtypes:
    before this check it returned a report for an int64 input that a real step refuses."""
    model = odt.models.create("mcunet-tiny", input_shape=(3, 8, 8))
    x = odt.models.example_input(model, batch_size=2).to(dtype)
    with pytest.raises(RuntimeError):  # the reference: PyTorch's own forward refuses it
        model(x)
    want = (rf"example input of dtype {dtype} \(parameters: torch\.float32\).*in module "
            rf"'stem\.0'.*aten\.convolution.*Pass example_input\.to\(torch\.float32\)")
    with pytest.raises(ValueError, match=want):
        odt.estimate(model, x, "full")
    with pytest.raises(ValueError, match=want):
        odt.measure(model, x, "bias-only", rss=False)


def test_input_dtypes_pytorch_accepts_still_pass():
    class CastsItself(nn.Module):  # uint8 pixels in, the model scales them itself
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            return self.fc(x.float() / 255)

    pixels = torch.randint(0, 255, (2, 4), dtype=torch.uint8)
    CastsItself()(pixels)  # PyTorch runs it, so measure must too
    assert odt.measure(CastsItself(), pixels, "full", rss=False).peak_bytes > 0
    # fp16 activations through an fp32 BatchNorm: CPU "mixed type" batch norm runs it
    norm = nn.Sequential(nn.BatchNorm1d(4), nn.Flatten())
    half = torch.randn(2, 4).half()
    assert norm(half).dtype == torch.float16
    est = odt.estimate(norm, half, "full")
    assert est.by_category["weights"] == 4 * (4 + 4 + 4 + 4) + 8  # fp32 affine, stats, count


def test_report_checks_and_views():
    model = odt.models.create("mbv2-tiny", input_shape=(3, 16, 16))
    x = odt.models.example_input(model, batch_size=2)
    est = odt.estimate(model, x, "bias-only", optimizer="sgd-m", engine="lean")
    assert est.total_bytes == sum(est.by_category.values())
    assert est.method == "estimate" and est.batch_size == 2 and est.scheme == "bias-only"
    assert sum(r.saved_bytes for r in est.rows) == est.by_category["activations"]
    assert max(b for _, b in est.timeline) == est.peak_bytes
    text = est.table()
    assert all(cat in text for cat in CATEGORIES) and "blocks.0.block.0.0" in text
    assert "<table>" in est._repr_html_()
    fit = odt.device("raspberry-pi-4").fit(est)  # duck-typed by the hardware module
    assert fit.fits and fit.step_time_s > 0
    with pytest.raises(ValueError, match="by_category needs exactly"):
        MemoryReport({"weights": 1}, 1, 0, 0, 0, 1, "pytorch", "sgd", "estimate")
    with pytest.raises(ValueError, match="unknown method"):
        MemoryReport(dict.fromkeys(CATEGORIES, 0), 0, 0, 0, 0, 1, "pytorch", "sgd", "guess")
    errors = compare(est, est)
    assert set(errors) == {*CATEGORIES, "peak"} and not any(errors.values())
    assert memory.compare(est, MemoryReport(dict.fromkeys(CATEGORIES, 0), 1, 0, 0, 0, 2,
                                            "lean", "sgd-m", "measure"))["weights"] == float("inf")


# ---------------------------------------------------------------- figures


def test_figures_draw_what_the_reports_say():
    model = odt.models.create("mbv2-tiny", input_shape=(3, 16, 16)).eval()
    x = odt.models.example_input(model, batch_size=2)
    stock = odt.estimate(model, x, "bias-only")
    lean = odt.estimate(model, x, "bias-only", engine="lean")
    fig = odt.viz.memory_bars({"stock": stock, "lean": lean}, budget_bytes=320 * 1024)
    bars = [p for p in fig.axes[0].patches]
    assert len(bars) == 4 * 2  # four stacked categories per report
    tops = [max(p.get_y() + p.get_height() for p in bars[i::2]) for i in range(2)]
    assert tops[0] / tops[1] == pytest.approx(stock.total_bytes / lean.total_bytes)
    fig = odt.viz.saved_bytes_per_layer({"stock": stock, "lean": lean}, top=5)
    assert len(fig.axes[0].get_yticklabels()) == 5
    fig = odt.viz.memory_timeline({"estimated": lean, "measured": odt.measure(
        model, x, "bias-only", engine="lean", rss=False)})
    lines = [line for line in fig.axes[0].get_lines() if len(line.get_xdata()) > 2]
    assert len(lines) == 2
    unit = fig.axes[0].get_ylabel().split("(")[1].rstrip(")")
    scale = {"B": 1, "KiB": 2**10, "MiB": 2**20}[unit]
    assert max(lines[0].get_ydata()) * scale == pytest.approx(lean.peak_bytes)
    with pytest.raises(ValueError, match="at most two"):
        odt.viz.saved_bytes_per_layer([stock, lean, stock])
    with pytest.raises(TypeError, match="not a MemoryReport"):
        odt.viz.memory_bars({"x": 3})
    with pytest.raises(ValueError, match="at least one"):
        odt.viz.memory_timeline({})
