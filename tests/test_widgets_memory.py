"""The memory explorer, driven headlessly: each control changes the shown numbers to what
odt.estimate and DeviceProfile.fit give for the new setting."""

from __future__ import annotations

import html
import re

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


def _bar_widths(html_text: str) -> dict[str, float]:
    """{component: width in % of the bar} from the explorer's stacked bar."""
    return {m[0]: float(m[1]) for m in re.findall(
        r"<div title='([a-z ]+) [^']*' style='width:([0-9.]+)%", html_text)}


def test_the_bar_stacks_what_is_live_at_the_peak_up_to_the_peak(explorer):
    report, fit = _expected(explorer)  # mbv2-tiny, bias-only, lean, batch 8: 1.34 MiB
    parts = explorer.fit.peak_components
    assert parts == fit.peak_components and sum(parts.values()) == fit.needed_bytes
    # on the MCU the frozen weights sit in flash: the SRAM bar holds the rest of the peak
    assert fit.needed_bytes == report.peak_bytes - report.frozen_weight_bytes
    widths = _bar_widths(explorer.plot.value)
    top = max(fit.needed_bytes, fit.available_bytes)
    assert set(widths) == {k for k, v in parts.items() if v}
    for name, width in widths.items():
        assert width == pytest.approx(100 * parts[name] / top, abs=1e-3), name
    assert sum(widths.values()) == pytest.approx(100 * fit.needed_bytes / top, abs=1e-2)
    budget = re.search(r"left:([0-9.]+)%", explorer.plot.value)
    assert float(budget[1]) == pytest.approx(100 * fit.available_bytes / top, abs=1e-3)
    # the shown numbers name the peak's components, not the categories alone
    for name, nbytes in report.peak_components.items():
        assert f"{name} {odt.format_bytes(nbytes)}" in explorer.summary.value
    assert html.escape(report.peak_at) in explorer.summary.value


def test_the_verdict_names_the_transient_buffers_and_what_to_try(explorer):
    assert not explorer.fit.fits and explorer.fit.peak_component == "transient"
    text = html.unescape(explorer.verdict.value)
    assert "transient buffers (the input and output of the op being computed) take" in text
    assert "largest category" not in text and "try a smaller batch" in text
    explorer.controls["device"].value = "raspberry-pi-4"  # fits; the allocator's scratch shows
    assert explorer.fit.fits and "kernel scratch" in explorer.fit.peak_components
    assert "kernel scratch" in explorer.plot.value
    explorer.controls["device"].value = "stm32f746"
    explorer.controls["scheme"].value = "full"
    explorer.controls["engine"].value = "pytorch"  # stock full training: saved activations
    assert explorer.fit.peak_component == "saved activations"
    assert "saved activations take" in explorer.verdict.value


def test_a_setting_seen_before_is_answered_from_the_cache(explorer):
    first = explorer.report
    explorer.controls["batch_size"].value = 4
    explorer.controls["batch_size"].value = 8
    assert explorer.report is first  # the same answer, not a new estimate
    assert explorer.response_s >= 0
    # what is shown is refreshed from the cached answer: a fresh estimate's numbers
    report, fit = _expected(explorer)
    assert explorer.report.peak_components == report.peak_components
    assert f"({report.peak_bytes:,} B)" in explorer.summary.value
    assert html.escape(fit.verdict) in explorer.verdict.value
