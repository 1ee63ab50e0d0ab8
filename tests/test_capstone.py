"""The capstone pipeline against independent references: odt.estimate's peak, the roofline
computed by hand from the profile, the payload bytes by the wire layout, the link time by
latency + bits / throughput, PyTorch's own gradient, and a fresh odt.train run."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch.nn import functional as F

import odtkit as odt
from odtkit.lab import FLEET, Capstone, round_time_figure
from odtkit.lab._capstone import (
    choose_compressor,
    choose_precision,
    round_bytes,
    trained_gradient,
    usable_precisions,
)


@pytest.fixture(scope="module")
def cap():
    torch.set_num_threads(1)
    return Capstone(epochs=1)


def _roofline_by_hand(report, dev, dtype):
    macs = report.forward_macs + report.backward_macs
    moved = 2 * sum(report.by_category.values())  # every byte written once, read once
    return max(macs / dev.peak_macs_per_s[dtype], moved / dev.bandwidth_bytes_per_s)


def _index_bytes(n):
    return 1 if n <= 2**8 else 2 if n <= 2**16 else 4


def test_devices_exclude_what_cannot_train_in_float_or_has_no_roofline(cap):
    skip = cap.excluded()
    assert set(skip) == {"esp32-s3", "rp2040", "phone-snapdragon-7-gen-1"}
    assert "int8 only" in skip["rp2040"] and "bandwidth" in skip["phone-snapdragon-7-gen-1"]
    assert set(cap.devices()) | set(skip) == set(odt.devices())
    with pytest.raises(ValueError, match="int8 graph"):
        usable_precisions("esp32-s3")


def test_precision_is_the_fastest_roofline_of_the_full_update(cap):
    nano = odt.device("jetson-nano")  # fp16 peak twice fp32's, but the step is memory-bound
    choice = choose_precision(nano, cap.pretrained, cap.x)
    times = {}
    for precision in ("fp32", "fp16"):
        full = odt.plan(cap.pretrained, "full", norm_stats="frozen", precision=precision)
        engine = "lean" if precision == "fp32" else "pytorch"
        report = odt.estimate(cap.pretrained, cap.x, full, optimizer="sgd-m", engine=engine)
        dtype = "fp32" if precision == "fp32" else "fp16"
        times[precision] = _roofline_by_hand(report, nano, dtype)
        assert choice.options[precision] == (report.peak_bytes, pytest.approx(times[precision]))
    assert nano.peak("fp16") > 1.9 * nano.peak("fp32")
    assert times["fp32"] < times["fp16"] and choice.precision == "fp32"
    assert set(choice.options) == {"fp32", "fp16", "bf16"}
    gap9 = choose_precision("gap9", cap.pretrained, cap.x)  # no fp32 unit: fp16
    assert set(gap9.options) == {"fp16", "bf16"} and gap9.precision == "fp16"


@pytest.mark.parametrize("device", ["raspberry-pi-4", "stm32h743"])
def test_card_numbers_equal_independent_computations(cap, device):
    card = cap.card(device)
    dev = odt.device(device)
    found = cap.search(device)
    assert card.plan == found.plan and card.precision == "fp32" and card.engine == "lean"
    report = odt.estimate(cap.pretrained, cap.x, card.plan, optimizer="sgd-m", engine="lean")
    assert card.peak_bytes == report.peak_bytes
    if dev.kind == "mcu":  # frozen weights run from flash
        assert card.need_bytes == report.peak_bytes - report.frozen_weight_bytes
        assert (card.memory, card.ram_bytes) == ("sram", dev.sram_bytes)
    else:  # the allocator peak (kernel scratch) counts in DRAM
        assert card.need_bytes == max(report.peak_bytes, report.allocator_peak_bytes)
        assert (card.memory, card.ram_bytes) == ("dram", dev.dram_bytes)
    assert card.fits and card.need_bytes <= card.ram_bytes
    assert card.step_s == pytest.approx(_roofline_by_hand(report, dev, "fp32"))
    link = odt.link(odt.lab.LINK_BY_KIND[dev.kind])
    assert card.link == link.name
    per_value = {"dense fp32": 4, "fp16": 2}
    if device == "raspberry-pi-4":  # Wi-Fi: the dense round fits (the H743's top-k: below)
        assert card.compressor == "dense fp32"
    if card.compressor in per_value:
        assert card.bytes_per_round == per_value[card.compressor] * card.plan.trainable_numel
    bits = 8 * card.bytes_per_round
    assert card.round_s == pytest.approx((link.latency_s or 0) + bits / link.throughput_bits_per_s)
    assert card.round_s <= card.round_budget_s
    if device == "raspberry-pi-4":  # the same training, run again
        model = copy.deepcopy(cap.pretrained)
        history = odt.train(model, cap.task, card.plan, epochs=1, engine="lean",
                            progress=False, lr=0.05, optimizer="sgd-m", batch_size=32, seed=0)
        assert card.accuracy == history.test_acc[-1] and card.epochs == 1
    text = str(card)
    assert f"{card.bytes_per_round:,} B" in text and card.device in text
    assert "<table>" in card._repr_html_() and card.compressor in card._repr_html_()


def test_stm32h743_needs_top_k_on_ble_and_the_bytes_follow_the_wire_layout(cap):
    card = cap.card("stm32h743")  # 51,046 entries: dense 1.1 s, fp16 0.58 s over BLE
    fleet = cap.fleet("stm32h743")
    n = card.plan.trainable_numel
    ble = odt.link("ble")
    assert fleet.options["dense fp32"][0] == 4 * n and fleet.options["fp16"][0] == 2 * n
    assert fleet.options["fp16"][1] > 0.5 >= fleet.options["top-k 1% + EF"][1]
    assert card.compressor == "top-k 1% + EF"
    grads = trained_gradient(cap.pretrained, cap.task, card.plan)
    by_hand = sum(math.ceil(0.01 * g.numel()) * (4 + _index_bytes(g.numel()))
                  for g in grads.values())
    assert card.bytes_per_round == by_hand
    assert card.round_s == pytest.approx(ble.latency_s + 8 * by_hand / ble.throughput_bits_per_s)


def test_trained_gradient_is_pytorchs_on_the_trained_entries(cap):
    plan = cap.search("stm32h743").plan
    grads = trained_gradient(cap.pretrained, cap.task, plan)
    assert sum(g.numel() for g in grads.values()) == plan.trainable_numel
    ref = copy.deepcopy(cap.pretrained).eval()  # frozen norm statistics: eval-mode norms
    F.cross_entropy(ref(cap.task.x_train[:32]), cap.task.y_train[:32]).backward()
    masks = plan.masks()
    assert masks  # the plan is channel-sparse
    for name, p in ref.named_parameters():
        if name in plan.trainable:
            want = p.grad[masks[name]] if name in masks else p.grad
            torch.testing.assert_close(grads[name], want, rtol=1e-4, atol=1e-6)
    assert all(not p.requires_grad or p.grad is None for p in cap.pretrained.parameters())


def test_compressor_choice_by_hand():
    grads = {"w": torch.randn(1000, generator=torch.Generator().manual_seed(0))}
    ble = odt.link("ble")
    want = {"dense fp32": 4000, "fp16": 2000, "top-k 1% + EF": 10 * (4 + 2),
            "top-k 0.1% + EF": 1 * (4 + 2)}
    assert {k: round_bytes(grads, k) for k in FLEET} == want
    t = {k: ble.latency_s + 8 * b / ble.throughput_bits_per_s for k, b in want.items()}
    assert choose_compressor(grads, "ble", 1.0).label == "dense fp32"
    mid = choose_compressor(grads, "ble", (t["dense fp32"] + t["fp16"]) / 2)
    assert mid.label == "fp16" and mid.fits and mid.round_s == pytest.approx(t["fp16"])
    tight = choose_compressor(grads, "ble", 1e-3)  # below the 7.5 ms latency: nothing fits
    assert tight.label == "top-k 0.1% + EF" and not tight.fits


def test_training_runs_once_per_distinct_plan(cap):
    first = cap.card("raspberry-pi-4")
    before = cap.trainings
    laptop = cap.card("laptop-x86-4core")  # the same plan (all of DRAM is room enough)
    assert laptop.plan == first.plan and cap.trainings == before
    assert laptop.accuracy == first.accuracy and laptop.step_s < first.step_s


def test_bad_input_names_the_value_and_the_choices(cap):
    with pytest.raises(ValueError, match="stm32f746"):
        cap.card("stm32f74")
    with pytest.raises(ValueError, match="int8 only.*raspberry-pi-4"):
        cap.card("esp32-s3")
    with pytest.raises(ValueError, match="epochs"):
        Capstone(epochs=0)
    with pytest.raises(ValueError, match="round_budget_s"):
        choose_compressor({"w": torch.ones(4)}, "ble", 0)
    with pytest.raises(ValueError, match="top-k 1% \\+ EF"):
        round_bytes({"w": torch.ones(4)}, "topk 5%")


def test_round_time_figure(cap):
    fleet = cap.fleet("stm32h743")
    fig = round_time_figure(fleet)
    ax = fig.axes[0]
    assert len(ax.patches) == len(FLEET) and ax.get_xscale() == "linear"
    widths = [p.get_width() for p in ax.patches]
    assert widths == pytest.approx([fleet.options[k][1] for k in FLEET])
    assert len({p.get_facecolor() for p in ax.patches}) == len(FLEET)
    assert [t.get_text() for t in ax.get_yticklabels()] == list(FLEET)


def test_a_reduced_precision_plan_is_the_searched_scheme_on_stock_autograd(cap):
    plan, report, fit = cap.plan("gap9")  # GAP9 computes floats in fp16 only
    found = cap.search("gap9").plan
    assert plan.precision == "fp16" and found.precision == "fp32"
    assert (plan.trainable, plan.channels) == (found.trainable, found.channels)
    ref = odt.estimate(cap.pretrained, cap.x, plan, optimizer="sgd-m", engine="pytorch")
    assert report.peak_bytes == ref.peak_bytes and fit.dtype == "fp16" and fit.fits
    assert fit.step_time_s == pytest.approx(_roofline_by_hand(ref, odt.device("gap9"), "fp16"))


def test_a_card_that_does_not_fit_says_why(cap):
    import dataclasses

    card = cap.card("stm32f746")
    assert card.fits and "why" not in dict(card.rows())
    dev = odt.device("stm32f746")
    report = odt.estimate(cap.pretrained, odt.models.example_input(cap.pretrained, batch_size=64),
                          card.plan, optimizer=cap.table.settings_dict["optimizer"], engine="lean")
    fit = dev.fit(report)  # the same plan at batch 64 overflows the 320 KiB of SRAM
    assert not fit.fits
    short = dataclasses.replace(card, fits=False, verdict=fit.verdict)
    assert dict(short.rows())["why"] == fit.verdict and "DOES NOT FIT" in str(short)
