"""The memory explorer, driven headlessly: each control changes the shown numbers to what
odt.estimate and DeviceProfile.fit give for the new setting."""

from __future__ import annotations

import matplotlib
import pytest

import odtkit as odt
from odtkit.widgets.memory import explorer_input_shape

matplotlib.use("Agg")


@pytest.fixture()
def explorer():
    return odt.widgets.memory_explorer("mbv2-tiny", batch_size=8, resolution=32,
                                       scheme="bias-only", engine="lean", device="stm32f746")


def _expected(ex):
    c = {k: v.value for k, v in ex.controls.items()}
    model = odt.models.create(c["model"], input_shape=explorer_input_shape(c["model"],
                                                                           c["resolution"]))
    x = odt.models.example_input(model, batch_size=c["batch_size"])
    plan = odt.plan(model, c["scheme"], norm_stats="frozen" if c["frozen_statistics"] else "batch")
    report = odt.estimate(model, x, plan, optimizer=c["optimizer"], engine=c["engine"])
    return report, odt.device(c["device"]).fit(report)


def test_batch_size_changes_total_and_verdict(explorer):
    before_total, before_verdict = explorer.summary.value, explorer.verdict.value
    peak8 = explorer.report.peak_bytes
    explorer.controls["batch_size"].value = 16
    assert explorer.report.batch_size == 16 and explorer.report.peak_bytes > peak8
    report, fit = _expected(explorer)
    assert explorer.report.by_category == report.by_category
    assert explorer.report.peak_bytes == report.peak_bytes
    assert f"{report.peak_bytes:,} B" in explorer.summary.value
    assert explorer.summary.value != before_total and explorer.verdict.value != before_verdict
    assert explorer.fit.verdict == fit.verdict


def test_verdict_flips_between_devices(explorer):
    explorer.controls["device"].value = "raspberry-pi-4"
    assert explorer.fit.fits and "fits raspberry-pi-4" in explorer.verdict.value
    explorer.controls["device"].value = "rp2040"
    explorer.controls["scheme"].value = "full"
    explorer.controls["engine"].value = "pytorch"
    assert not explorer.fit.fits and "does not fit rp2040" in explorer.verdict.value
    report, fit = _expected(explorer)
    assert explorer.fit.verdict == fit.verdict


def test_every_control_is_followed(explorer):
    for name, value in [("model", "resnet8"), ("resolution", 16), ("optimizer", "adam"),
                        ("engine", "pytorch"), ("frozen_statistics", False),
                        ("scheme", "last:2"), ("model", "ds-cnn"), ("model", "mlp")]:
        explorer.controls[name].value = value
        report, _ = _expected(explorer)
        assert explorer.report.by_category == report.by_category, name
        assert odt.format_bytes(report.peak_bytes) in explorer.summary.value, name


def test_bad_settings_name_the_choices():
    with pytest.raises(ValueError, match="unknown model 'mbv3'"):
        odt.widgets.memory_explorer("mbv3")
    with pytest.raises(ValueError, match="unknown engine"):
        odt.widgets.memory_explorer(engine="fast")
    with pytest.raises(ValueError, match="unknown device"):
        odt.widgets.memory_explorer(device="stm32")
    with pytest.raises(ValueError, match=r"multiple of 8.*got resolution=30; e\.g\. 32"):
        odt.widgets.memory_explorer(resolution=30)
    with pytest.raises(ValueError, match=r"batch_size must be an integer in \[1, 64\], "
                                         r"got batch_size=65"):
        odt.widgets.memory_explorer(batch_size=65)
    with pytest.raises(ValueError, match=r"resolution must be an integer in \[8, 128\]"):
        odt.widgets.memory_explorer(resolution=136)


def test_a_setting_that_cannot_run_is_explained_not_raised(explorer):
    explorer.controls["resolution"].value = 8  # 1x1 maps at the head
    explorer.controls["frozen_statistics"].value = False  # batch statistics...
    explorer.controls["batch_size"].value = 1  # ...of one value per channel
    assert explorer.report is None and "cannot estimate" in explorer.summary.value
    assert "more than 1 value per channel" in explorer.summary.value
    explorer.controls["batch_size"].value = 2
    assert explorer.report is not None and explorer.report.batch_size == 2
