"""The budget explorer, driven headlessly: each control changes the shown plan and numbers to
what odt.sparse.search, odt.estimate and DeviceProfile.fit give for the new setting, the
train button measures the plan as odt.train does, and an estimate-only change answers fast.

Interactions run inside an event loop, as in a notebook kernel: the numbers follow each
change at once and the figures are drawn once the loop has been idle for a moment (here:
only where a test waits for it), which keeps these tests fast."""

from __future__ import annotations

import asyncio
import copy
import math
import statistics

import matplotlib
import pytest
import torch
from torch import nn

import odtkit as odt
from odtkit.sparse import model_fingerprint

matplotlib.use("Agg")

SETTINGS = {"epochs": 1, "lr": 0.05, "seed": 0, "ratios": (0.25, 0.5, 1.0), "layers": (),
            "bias_ks": (1, 4, 16), "criterion": "magnitude-largest", "engine": "lean",
            "optimizer": "sgd-m", "precision": "fp32", "batch_size": 1,
            "train_batch_size": 32}


def _option_plan(model: nn.Module, biases: int, weights: dict[str, float]):
    if not biases and not weights:
        return odt.plan(model, "none")
    return odt.sparse.plan(model, biases=biases, weights=weights)


@pytest.fixture(scope="module")
def table():
    """A table of the explorer's model with the real estimated bytes of each option and
    made-up gains (measuring them takes minutes; the explorer only adds them up)."""
    model = odt.models.create("mcunet-tiny", pretrained=True).train()
    task = odt.datasets.load("digits-shift")
    layers = ("blocks.6.block.1.0", "blocks.6.block.2.0", "blocks.7.block.0.0",
              "blocks.7.block.1.0", "blocks.7.block.2.0", "classifier")
    settings = dict(SETTINGS, layers=layers)
    x = odt.models.example_input(model, batch_size=1)

    def cost(biases, weights):
        r = odt.estimate(model, x, _option_plan(model, biases, weights), optimizer="sgd-m",
                         engine="lean")
        return int(r.peak_bytes), int(r.frozen_weight_bytes)

    baseline = odt.evaluate(model.eval(), task.x_test, task.y_test)
    model.train()
    row = odt.sparse.Contribution
    biases = tuple(row("biases", baseline + g, g, *cost(k, {}), k=k)
                   for k in settings["bias_ks"] for g in [0.03 * math.log2(k + 1)])
    weights = tuple(row("weights", baseline + g, g, *cost(0, {layer: r}), layer=layer, ratio=r)
                    for i, layer in enumerate(layers) for r in settings["ratios"]
                    for g in [0.02 * (i + 1) * math.sqrt(r)])
    with_bias = tuple(n for n, m in model.named_modules()
                      if n and isinstance(getattr(m, "bias", None), nn.Parameter))
    none_peak, none_frozen = cost(0, {})
    return odt.sparse.ContributionTable(
        model="mcunet-tiny", model_fingerprint=model_fingerprint(model), task=task.name,
        version=odt.__version__, settings=tuple(settings.items()), baseline_acc=baseline,
        none_peak_bytes=none_peak, none_frozen_weight_bytes=none_frozen,
        bias_layers=with_bias, biases=biases, weights=weights)


def in_loop(fn, *, draw=False):
    """Run ``fn`` in an event loop, as a kernel runs widget callbacks; ``draw``: give the
    loop control afterwards, so the explorer draws its figures."""
    async def main():
        out = fn()
        if draw:
            await asyncio.sleep(2 * odt.widgets.sparse.DRAW_DELAY_S)
        return out
    return asyncio.run(main())


def explorer(table, **kwargs):
    return in_loop(lambda: odt.widgets.budget_explorer(table=table, epochs=1, **kwargs))


def set_controls(ex, *changes, draw=False):
    def run():
        for name, value in changes:
            ex.controls[name].value = value
    in_loop(run, draw=draw)


def _expected(ex, table):
    """Search, estimate and fit for the shown controls, computed here directly."""
    model = ex.model
    c = {k: v.value for k, v in ex.controls.items()}
    budget = ({"budget_bytes": int(c["budget"])} if c["unit"] == "bytes"
              else {"budget_share": c["budget"]})
    res = odt.sparse.search(model, table=table, **budget)
    x = odt.models.example_input(model, batch_size=1)
    report = odt.estimate(model, x, ex.plan, optimizer="sgd-m", engine="lean")
    return res, report, odt.device(c["device"]).fit(report)


def _check_shown(ex, table, what=""):
    res, report, fit = _expected(ex, table)
    assert ex.plan == res.plan, what
    assert ex.report.by_category == report.by_category, what
    assert ex.report.peak_bytes == report.peak_bytes, what
    assert f"{report.peak_bytes:,} B" in ex.summary.value, what
    assert f"{ex.plan.trainable_share:.1%}" in ex.summary.value, what
    assert ex.fit.verdict == fit.verdict and fit.verdict in ex.verdict.value, what
    predicted = table.baseline_acc + table.predicted_gain(res.biases, res.weights_dict)
    assert ex.predicted_acc == pytest.approx(predicted, abs=1e-12), what
    assert f"{100 * predicted:.1f}%" in ex.accuracy.value, what


def test_every_control_is_followed(table):
    ex = explorer(table, device="stm32f746")
    _check_shown(ex, table, "start")
    low, high = ex.controls["budget"].min, ex.controls["budget"].max
    assert (low, high) == (table.none_peak_bytes, ex.full_peak_bytes)
    seen = {ex.summary.value}
    for name, value in [("budget", low + 0.1 * (high - low)), ("budget", low),
                        ("device", "nrf52840"), ("budget", high), ("unit", "share"),
                        ("budget", 0.5), ("device", "raspberry-pi-4")]:
        set_controls(ex, (name, value))
        _check_shown(ex, table, f"{name}={value}")
        seen.add(ex.summary.value + ex.verdict.value)
    assert len(seen) == 8  # every change changed what is shown
    assert ex.controls["budget"].description == "budget (share of the parameters)"
    set_controls(ex, ("budget", ex.controls["budget"].min), draw=True)  # figures follow
    for out in (ex.plan_plot, ex.memory_plot, ex.accuracy_plot):
        assert "image/png" in out.outputs[0]["data"]
    assert ex.report.peak_bytes <= table.none_peak_bytes  # the floor: nothing extra


def test_verdict_flips_between_devices(table):
    ex = explorer(table, device="stm32h743")
    set_controls(ex, ("budget", ex.controls["budget"].max))
    assert ex.fit.fits and "fits stm32h743" in ex.verdict.value
    set_controls(ex, ("device", "nrf52840"))
    assert not ex.fit.fits and "does not fit nrf52840" in ex.verdict.value
    assert "crimson" in ex.verdict.value
    _check_shown(ex, table, "nrf52840")


@pytest.mark.parametrize("share", [0.01, 0.088, 0.151, 0.5, 1.0])
def test_share_unit_is_a_share_of_the_parameters(table, share):
    ex = explorer(table, unit="share", budget=share)
    res = odt.sparse.search(ex.model, table=table, budget_share=share)
    budget = odt.sparse.budget_params(ex.model, share)
    total = odt.sparse.total_params(ex.model)
    assert ex.plan == res.plan and ex.result.budget_params == budget
    assert ex.plan.trainable_numel <= budget and ex.plan.trainable_share <= share
    assert f"{share:.1%} of the parameters ({budget:,} of {total:,})" in ex.summary.value
    assert f"({ex.report.peak_bytes:,} B)" in ex.summary.value  # memory shown beside it
    _check_shown(ex, table, f"share={share}")


def test_switching_units_keeps_the_plan_within_the_new_budget(table):
    ex = explorer(table, unit="share", budget=0.151)
    assert ex.controls["unit"].options == (("bytes", "bytes"), ("share of parameters", "share"))
    peak, trained = ex.report.peak_bytes, ex.plan.trainable_numel
    set_controls(ex, ("unit", "bytes"))  # the bytes the shown plan needs
    assert ex.controls["budget"].description == "budget (bytes, training peak)"
    assert ex.controls["budget"].value == min(max(peak, ex.controls["budget"].min),
                                              ex.controls["budget"].max)
    assert ex.report.peak_bytes <= ex.controls["budget"].value
    _check_shown(ex, table, "bytes")
    trained = ex.plan.trainable_numel
    set_controls(ex, ("unit", "share"))  # the smallest 0.1% step that covers its parameters
    share = ex.controls["budget"].value
    assert odt.sparse.budget_params(ex.model, share) >= trained
    assert share == 0.001 or odt.sparse.budget_params(ex.model, round(share - 0.001, 6)) < trained
    assert ex.plan.trainable_numel <= odt.sparse.budget_params(ex.model, share)
    _check_shown(ex, table, "share")


def test_train_button_adds_the_measured_point(table):
    few = odt.datasets.load("digits-shift").subset(n_train=96)  # three steps of 32
    ex = explorer(table, budget=0.5, unit="share", task=few)
    in_loop(ex.train_button.click)
    [(label, point)] = ex.trained.items()
    model = copy.deepcopy(ex.model)
    direct = odt.train(model, few, ex.plan, epochs=1, lr=0.05, optimizer="sgd-m",
                       batch_size=32, seed=0, engine="lean", progress=False)
    assert point.accuracy == direct.test_acc[-1]
    assert point.peak_bytes == ex.report.peak_bytes and point.predicted == ex.predicted_acc
    assert f"<b>{100 * point.accuracy:.1f}%</b>" in ex.accuracy.value
    assert label == "≤ 50.0% of params"
    assert not ex.train_button.disabled
    torch.testing.assert_close(ex.model.classifier.weight, odt.models.create(
        "mcunet-tiny", pretrained=True).classifier.weight)  # the shown model never trains


def test_bad_arguments_name_the_choices(table):
    with pytest.raises(ValueError, match="unknown model 'mcunet'"):
        odt.widgets.budget_explorer("mcunet", table=table)
    with pytest.raises(ValueError, match=r"unknown unit 'kib'.*bytes.*share"):
        odt.widgets.budget_explorer(unit="kib", table=table)
    with pytest.raises(ValueError, match="unknown device"):
        odt.widgets.budget_explorer(device="stm32", table=table)
    for bad in (15, 0, -0.5, 1.2):
        with pytest.raises(ValueError, match=r"budget must be a share of the parameters in "
                                             rf"\[0.001, 1\].*got budget={bad}"):
            explorer(table, unit="share", budget=bad)
    with pytest.raises(ValueError, match=r"budget must be bytes in \[.*got budget=1000"):
        explorer(table, budget=1000)


@pytest.mark.parametrize("unit", ["bytes", "share"])
def test_estimate_only_interactions_answer_fast(table, unit, capsys):
    ex = explorer(table, unit=unit)
    low, high = ex.controls["budget"].min, ex.controls["budget"].max
    budgets = [low + (high - low) * i / 9 for i in range(10)]
    changes = [("budget", b) for b in budgets] + [("device", d) for d in (
        "nrf52840", "rp2040", "stm32h743", "esp32-s3")]
    first = []
    for change in changes:  # warm-up: the first visit of each budget may search
        set_controls(ex, change)
        first.append(ex.response_s)
    times = []
    for change in (changes + changes)[:20]:
        set_controls(ex, change)
        times.append(ex.response_s)
        if len(times) % 5 == 0:
            _check_shown(ex, table, str(change))
    median = statistics.median(times)
    with capsys.disabled():
        print(f"\nbudget explorer ({unit}): median answer {1000 * median:.1f} ms over "
              f"{len(times)} estimate-only interactions; first visits, searches included: "
              f"median {1000 * statistics.median(first):.1f} ms, slowest "
              f"{1000 * max(first):.1f} ms")
    assert median <= 0.1


def test_a_parameter_budget_estimates_only_the_chosen_plan(table):
    ex = explorer(table, unit="share", budget=0.237)
    assert ex.result.evaluated == 1 and ex.result.budget_by == "params"
