"""Explorer: pick a model, batch size, resolution, scheme, optimizer, engine and device;
see what is live at the peak of one training step and whether it fits the device.

    ex = odt.widgets.memory_explorer()
    ex                                   # in a notebook: controls, verdict and bars
    ex.controls["batch_size"].value = 16 # headless: the shown numbers follow
    ex.report, ex.fit, ex.summary.value, ex.verdict.value

Everything shown comes from odt.estimate and DeviceProfile.fit: the bar stacks the fit's
``peak_components`` (what the device's working memory holds at the peak: weights, saved
activations, transient buffers, gradients, optimizer state) up to the peak, against the
budget, and the verdict names the component that breaks it. Models are built once per
(name, resolution), their traces and every answer cached, and the bar is HTML (no
figure to render), so a setting seen before answers at once and a new one costs one
estimate.
"""

from __future__ import annotations

import functools
import html
import time
from typing import Any

import ipywidgets as w

from .._checks import check_choice, check_int
from ..hardware import device as get_device
from ..hardware import devices
from ..memory import ENGINES, MemoryReport, estimate
from ..models import create, example_input, names
from ..plans import plan as make_plan
from ..training import OPTIMIZERS
from ..units import format_bytes
from ..viz.memory import PEAK_COLORS

__all__ = ["MemoryExplorer", "memory_explorer", "explorer_input_shape"]

SCHEMES = ("full", "last:1", "last:2", "last:4", "bias-only", "norm-only", "none")


@functools.cache
def _default_shape(model: str) -> tuple[int, ...]:
    return tuple(create(model).input_shape)


def explorer_input_shape(model: str, resolution: int) -> tuple[int, ...]:
    """The input shape the explorer gives ``model`` at ``resolution`` (side or length)."""
    default = _default_shape(model)
    if len(default) == 2:  # (channels, length)
        return (default[0], resolution)
    return (default[0], resolution, resolution)


class MemoryExplorer(w.VBox):
    """The controls (``controls[name]``), the shown numbers (``summary``, ``verdict``),
    the stacked bars (``plot``) and the values behind them (``report``, ``fit``)."""

    def __init__(self, *, model: str, batch_size: int, resolution: int, scheme: str,
                 optimizer: str, engine: str, device: str, frozen_statistics: bool) -> None:
        get_device(device)  # an unknown device fails now, with the valid names
        self.controls: dict[str, w.ValueWidget] = {
            "model": w.Dropdown(options=names(), value=model, description="model"),
            "batch_size": w.IntSlider(value=batch_size, min=1, max=64, description="batch"),
            "resolution": w.IntSlider(value=resolution, min=8, max=128, step=8,
                                      description="resolution"),
            "scheme": w.Dropdown(options=SCHEMES, value=scheme, description="scheme"),
            "optimizer": w.Dropdown(options=OPTIMIZERS, value=optimizer,
                                    description="optimizer"),
            "engine": w.Dropdown(options=ENGINES, value=engine, description="engine"),
            "device": w.Dropdown(options=devices(), value=device, description="device"),
            "frozen_statistics": w.Checkbox(value=frozen_statistics,
                                            description="frozen BN statistics"),
        }
        self.summary = w.HTML()
        self.verdict = w.HTML()
        self.plot = w.HTML()  # the stacked bar of the peak's components, against the budget
        self.report: MemoryReport | None = None
        self.fit: Any = None
        self._models: dict[tuple[str, int], Any] = {}
        self._answers: dict[tuple, tuple[Any, Any]] = {}  # settings -> (report, error)
        self.response_s = 0.0  # how long the last update took, estimate to shown HTML
        for control in self.controls.values():
            control.observe(self._on_change, names="value")
        boxes = list(self.controls.values())
        super().__init__([w.HBox([w.VBox(boxes[:4]), w.VBox(boxes[4:])]), self.summary,
                          self.verdict, self.plot])
        self.update()

    def _model(self, name: str, resolution: int) -> Any:
        key = (name, resolution)
        if key not in self._models:
            self._models[key] = create(name, input_shape=explorer_input_shape(name, resolution))
        return self._models[key]

    def _on_change(self, change: dict) -> None:
        self.update()

    def _estimate(self, c: dict[str, Any]) -> tuple[MemoryReport | None, str]:
        """The report for settings ``c`` (or why there is none), cached per setting (the
        device is not one: it changes the fit, not the estimate)."""
        key = tuple(v for k, v in c.items() if k != "device")
        if key not in self._answers:
            model = self._model(c["model"], c["resolution"])
            model.train()  # as training runs it; the plan decides the norms' statistics
            x = example_input(model, batch_size=c["batch_size"])
            try:
                plan = make_plan(model, c["scheme"],
                                 norm_stats="frozen" if c["frozen_statistics"] else "batch")
                answer = (estimate(model, x, plan, optimizer=c["optimizer"],
                                   engine=c["engine"]), "")
            except ValueError as err:  # e.g. batch statistics of a single value per channel
                answer = (None, str(err))
            if len(self._answers) >= 512:
                self._answers.pop(next(iter(self._answers)))
            self._answers[key] = answer
        return self._answers[key]

    def update(self) -> None:
        """Estimate for the current controls, fit it to the device, refresh what is shown."""
        started = time.perf_counter()
        c = {k: v.value for k, v in self.controls.items()}
        self.report, error = self._estimate(c)
        if self.report is None:
            self.fit = None
            self.summary.value = f"<b>cannot estimate this setting</b>: {html.escape(error)}"
            self.verdict.value = self.plot.value = ""
            self.response_s = time.perf_counter() - started
            return
        dev = get_device(c["device"])
        self.fit = dev.fit(self.report)
        r, fit = self.report, self.fit
        parts = ", ".join(f"{k} {format_bytes(v)}" for k, v in r.peak_components.items())
        kept = ", ".join(f"{k} {format_bytes(v)}" for k, v in r.by_category.items())
        shape = (c["batch_size"], *explorer_input_shape(c["model"], c["resolution"]))
        self.summary.value = (
            f"<b>{html.escape(c['model'])}</b> input {shape}: peak "
            f"<b>{format_bytes(r.peak_bytes)}</b> ({r.peak_bytes:,} B) at "
            f"{html.escape(r.peak_at)}: {parts}. Kept by the step (categories): {kept}")
        color = "green" if fit.fits else "crimson"
        self.verdict.value = f"<span style='color:{color}'>{html.escape(fit.verdict)}</span>"
        ram = next(ch for ch in fit.checks if ch.memory != "flash")
        self.plot.value = peak_bar_html(
            fit.peak_components or r.peak_components, ram.available_bytes,
            f"{dev.name} {ram.memory.upper()}")
        self.response_s = time.perf_counter() - started


def peak_bar_html(parts: dict[str, int], budget_bytes: int, budget_label: str,
                  width_px: int = 560) -> str:
    """One stacked bar of ``parts`` (bytes by component, summing to the peak) with the
    budget as a dashed line, and a legend naming each part and its bytes."""
    peak = sum(parts.values())
    top = max(peak, budget_bytes, 1)
    cells = "".join(
        f"<div title='{html.escape(k)} {format_bytes(v)}' style='width:{100 * v / top:.3f}%;"
        f"background:{PEAK_COLORS.get(k, '#999999')}'></div>" for k, v in parts.items() if v)
    budget = (f"<div title='{html.escape(budget_label)}' style='position:absolute;"
              f"left:{100 * budget_bytes / top:.3f}%;top:-5px;bottom:-5px;"
              "border-left:2px dashed black'></div>")
    legend = " &nbsp; ".join(
        f"<span style='white-space:nowrap'><span style='display:inline-block;width:11px;"
        f"height:11px;background:{PEAK_COLORS.get(k, '#999999')}'></span> "
        f"{html.escape(k)} {format_bytes(v)}</span>" for k, v in parts.items())
    return (f"<div style='font-size:13px;max-width:{width_px}px;margin-top:6px'>"
            f"<div>live at the peak: <b>{format_bytes(peak)}</b>; dashed line: "
            f"{html.escape(budget_label)} {format_bytes(budget_bytes)}</div>"
            "<div style='position:relative;display:flex;height:24px;margin:8px 0;"
            f"border:1px solid #888;background:#f4f4f4'>{cells}{budget}</div>"
            f"<div style='line-height:1.6'>{legend}</div></div>")


def memory_explorer(model: str = "mbv2-tiny", *, batch_size: int = 8, resolution: int = 32,
                    scheme: str = "bias-only", optimizer: str = "sgd", engine: str = "lean",
                    device: str = "stm32f746", frozen_statistics: bool = True) -> MemoryExplorer:
    """The memory explorer, starting from the given settings.

    ``frozen_statistics``: BatchNorm uses its running statistics (eval mode), as when
    fine-tuning a pretrained model; False trains with batch statistics.
    """
    for what, value, choices in (("model", model, names()), ("scheme", scheme, SCHEMES),
                                 ("optimizer", optimizer, OPTIMIZERS),
                                 ("engine", engine, ENGINES)):
        check_choice(what, value, choices)
    check_int("batch_size", batch_size, low=1, high=64)  # the ranges of the sliders
    check_int("resolution", resolution, low=8, high=128)
    if resolution % 8:
        raise ValueError(f"resolution must be a multiple of 8 in [8, 128] (the slider's "
                         f"steps), got resolution={resolution}; e.g. {8 * round(resolution / 8)}")
    return MemoryExplorer(model=model, batch_size=batch_size, resolution=resolution,
                          scheme=scheme, optimizer=optimizer, engine=engine, device=device,
                          frozen_statistics=frozen_statistics)
