"""The capstone explorer, driven headlessly: choosing another device shows that device's
report card, the one the pipeline gives for it, without training a plan twice."""

from __future__ import annotations

import pytest
import torch

import odtkit as odt
from odtkit.lab import Capstone


@pytest.fixture(scope="module")
def explorer():
    torch.set_num_threads(1)
    return odt.widgets.capstone_explorer(Capstone(epochs=1), device="raspberry-pi-4")


def test_menu_lists_the_devices_the_capstone_plans_for(explorer):
    assert list(explorer.device.options) == explorer.capstone.devices()
    assert "rp2040" not in explorer.device.options  # int8 only: no float training
    assert explorer.card.device == explorer.device.value == "raspberry-pi-4"
    assert explorer.summary() == str(explorer.capstone.card("raspberry-pi-4"))


def test_choosing_a_device_updates_the_card(explorer):
    before = explorer.card
    trainings = explorer.capstone.trainings
    explorer.device.value = "jetson-agx-orin-64gb"  # what choosing in the menu does
    after = explorer.card
    assert after.device == "jetson-agx-orin-64gb" and after.link == "ethernet"
    assert after.step_s < before.step_s and after.round_s < before.round_s
    assert explorer.capstone.trainings == trainings  # the same plan: no new training
    assert f"{after.bytes_per_round:,} B" in explorer.view.value
    assert "jetson-agx-orin-64gb" in explorer.view.value
    dev = odt.device("jetson-agx-orin-64gb")
    assert f"of {odt.units.format_bytes(dev.dram_bytes)}" in explorer.summary()


def test_a_device_it_cannot_plan_for_is_refused_by_name(explorer):
    with pytest.raises(ValueError, match="raspberry-pi-4") as err:
        odt.widgets.capstone_explorer(explorer.capstone, device="esp32-s3")
    assert "esp32-s3" in str(err.value)
