"""Explorer: pick a model, batch size, resolution, scheme, optimizer, engine and device;
see the estimated training memory by category and whether one step fits the device.

    ex = odt.widgets.memory_explorer()
    ex                                   # in a notebook: controls, verdict and bars
    ex.controls["batch_size"].value = 16 # headless: the shown numbers follow
    ex.report, ex.fit, ex.summary.value, ex.verdict.value

Everything shown comes from odt.estimate and DeviceProfile.fit; models are built once per
(name, resolution) and their traces cached, so moving a slider costs a few milliseconds.
"""

from __future__ import annotations

import base64
import functools
import html
import io
from typing import Any

import ipywidgets as w
import matplotlib.pyplot as plt

from .._checks import check_choice, check_int
from ..hardware import device as get_device
from ..hardware import devices
from ..memory import ENGINES, MemoryReport, estimate
from ..models import create, example_input, names
from ..plans import plan as make_plan
from ..training import OPTIMIZERS
from ..units import format_bytes
from ..viz.memory import memory_bars

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
        self.plot = w.Output()
        self.report: MemoryReport | None = None
        self.fit: Any = None
        self._models: dict[tuple[str, int], Any] = {}
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

    def update(self) -> None:
        """Estimate for the current controls, fit it to the device, refresh what is shown."""
        c = {k: v.value for k, v in self.controls.items()}
        model = self._model(c["model"], c["resolution"])
        model.train()  # as training runs it; the plan decides the norms' statistics
        x = example_input(model, batch_size=c["batch_size"])
        try:
            plan = make_plan(model, c["scheme"],
                             norm_stats="frozen" if c["frozen_statistics"] else "batch")
            self.report = estimate(model, x, plan, optimizer=c["optimizer"],
                                   engine=c["engine"])
        except ValueError as err:  # e.g. batch statistics of a single value per channel
            self.report = self.fit = None
            self.summary.value = f"<b>cannot estimate this setting</b>: {html.escape(str(err))}"
            self.verdict.value = ""
            self.plot.outputs = ()
            return
        dev = get_device(c["device"])
        self.fit = dev.fit(self.report)
        r = self.report
        parts = ", ".join(f"{k} {format_bytes(v)}" for k, v in r.by_category.items())
        self.summary.value = (
            f"<b>{html.escape(c['model'])}</b> input {tuple(x.shape)}: peak "
            f"<b>{format_bytes(r.peak_bytes)}</b> ({r.peak_bytes:,} B); kept after the step "
            f"and during it: {parts}; total {format_bytes(r.total_bytes)}")
        color = "green" if self.fit.fits else "crimson"
        self.verdict.value = f"<span style='color:{color}'>{html.escape(self.fit.verdict)}</span>"
        budget = getattr(dev, "sram_bytes" if dev.kind == "mcu" else "dram_bytes", None)
        fig = memory_bars({f"{c['scheme']} ({c['engine']})": r}, budget_bytes=budget,
                          budget_label=f"{dev.name} {'SRAM' if dev.kind == 'mcu' else 'RAM'}",
                          figsize=(5.5, 3.2))
        # set the Output's content directly: no display messages from the kernel, so the
        # figure lands in the widget whether or not a frontend (or nbval) is listening
        self.plot.outputs = (_png_output(fig),)
        plt.close(fig)


def _png_output(fig: Any) -> dict:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    png = base64.b64encode(buffer.getvalue()).decode("ascii")
    return {"output_type": "display_data", "metadata": {},
            "data": {"image/png": png, "text/plain": "<memory bars>"}}


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
