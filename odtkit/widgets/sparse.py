"""Explorer: pick a device and a budget (bytes of training peak, or a share of the
parameters); see the sparse-update plan ``odt.sparse.search`` finds, drawn per layer, its
training memory against the budget, the share of the parameters it trains, whether it fits
the device, and the accuracy the contribution table predicts beside the accuracy of the plans
already trained; train the plan for real.

    ex = odt.widgets.budget_explorer()              # mcunet-tiny on digits-shift
    ex                                              # in a notebook: controls and figures
    ex.controls["budget"].value = 160 * 1024        # headless: the shown numbers follow
    ex.controls["unit"].value = "share"             # a share of the parameters, e.g. 0.151
    ex.plan, ex.report, ex.fit, ex.predicted_acc, ex.response_s
    ex.train_button.click()                         # trains the plan, adds its point

Everything shown comes from odt.sparse.search, odt.estimate and DeviceProfile.fit. The
model, the table and every searched plan and estimate are cached, so a budget, unit or
device change only looks them up (or searches once) and fits: ``response_s`` is the time
from the change to the shown numbers. The figures follow: at once in a script, and in a
notebook kernel just after the numbers, once for a burst of changes.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import html
import math
import time
from dataclasses import dataclass
from typing import Any

import ipywidgets as w
import matplotlib.pyplot as plt

from .._checks import check_choice, check_positive_int, check_seed
from ..datasets import load
from ..hardware import device as get_device
from ..hardware import devices
from ..memory import MemoryReport, estimate
from ..models import create, example_input, names
from ..plans import plan as make_plan
from ..sparse import budget_params, contributions, search, total_params
from ..training import train
from ..units import format_bytes
from ..viz.memory import memory_bars
from ..viz.quant import short_layer_name
from ..viz.sparse import accuracy_vs_memory, sparse_plan_layers
from ._figure import png_output

__all__ = ["BudgetExplorer", "budget_explorer", "UNITS", "TrainedPoint"]

UNITS = ("bytes", "share")  # bytes of training peak; a share of the parameters
_UNIT_LABELS = (("bytes", "bytes"), ("share of parameters", "share"))
_KIB = 1024
_SHARE_STEP = 0.001
DRAW_DELAY_S = 0.05  # in a kernel, figures wait this long for the next change of a burst


@dataclass(frozen=True)
class TrainedPoint:
    """A plan trained from the explorer: its peak training memory, the test accuracy it
    reached (``History.test_acc[-1]``), the accuracy the table predicted, and the run."""

    plan: Any
    peak_bytes: int
    accuracy: float
    predicted: float
    history: Any


@functools.cache
def _pretrained(model_name: str) -> Any:
    """One pretrained model per name, shared by explorers: only ever read (estimates and
    searches; training runs on a copy), so its estimate traces stay cached."""
    return create(model_name, pretrained=True).train()


class BudgetExplorer(w.VBox):
    """The controls (``controls``: device, unit, budget; ``train_button``), the shown
    numbers (``summary``, ``verdict``, ``accuracy``), the figures (``plan_plot``,
    ``memory_plot``, ``accuracy_plot``) and the values behind them (``result``, ``plan``,
    ``report``, ``fit``, ``predicted_acc``, ``trained``)."""

    def __init__(self, *, model_name: str, task: Any, table: Any, device: str, unit: str,
                 budget: float | None, epochs: int, seed: int) -> None:
        self.model, self.task, self.table = _pretrained(model_name), task, table
        self.epochs, self.seed = epochs, seed
        self.settings = dict(table.settings_dict)
        self.x = example_input(self.model, batch_size=self.settings["batch_size"])
        self._results: dict[str, dict[float, Any]] = {}
        self.trained: dict[str, TrainedPoint] = {}
        self.result: Any = None
        self.plan: Any = None
        self.report: MemoryReport | None = None
        self.fit: Any = None
        self.predicted_acc = math.nan
        self.response_s = self.draw_s = math.nan
        self._silent = False
        full = make_plan(self.model, "full", norm_stats="frozen",
                         precision=self.settings["precision"])
        self.full_peak_bytes = int(estimate(self.model, self.x, full,
                                            optimizer=self.settings["optimizer"],
                                            engine=self.settings["engine"]).peak_bytes)
        self.total_params = total_params(self.model)
        for end in (self.table.none_peak_bytes, self.full_peak_bytes):  # anchors for _search
            self._search("bytes", float(end))
        for end in _SHARE_STEP, 1.0:
            self._search("share", end)
        if budget is not None:
            self._check_budget(unit, budget)
        self.controls: dict[str, w.ValueWidget] = {
            "device": w.Dropdown(options=devices(), value=device, description="device"),
            "unit": w.ToggleButtons(options=_UNIT_LABELS, value=unit, description="budget in"),
            "budget": w.FloatSlider(continuous_update=False, style={"description_width":
                                                                   "initial"},
                                    layout=w.Layout(width="420px")),
        }
        self._configure_budget(unit, self._default_budget(unit) if budget is None else budget)
        self.train_button = w.Button(description="train this plan", icon="play",
                                     tooltip="runs odt.train on a copy of the model")
        self.summary, self.verdict, self.accuracy, self.status = (w.HTML() for _ in range(4))
        self.plan_plot, self.memory_plot, self.accuracy_plot = (w.Output() for _ in range(3))
        self._draw_loop: Any = None
        for control in self.controls.values():
            control.observe(self._on_change, names="value")
        self.train_button.on_click(lambda _: self.train_plan())
        c = self.controls
        super().__init__([
            w.HBox([c["device"], c["unit"]]), w.HBox([c["budget"], self.train_button]),
            self.summary, self.verdict, self.accuracy, self.status,
            w.HBox([self.plan_plot, w.VBox([self.memory_plot, self.accuracy_plot])])])
        self.update()

    # ------------------------------------------------------------------ budget control
    def _bounds_of(self, unit: str) -> tuple[float, float]:
        """The slider's range: bytes from inference alone (plan "none") to the full update's
        peak; a share of the parameters from 0.1% to all of them."""
        if unit == "bytes":
            return float(self.table.none_peak_bytes), float(self.full_peak_bytes)
        return _SHARE_STEP, 1.0

    def _check_budget(self, unit: str, budget: object) -> None:
        low, high = self._bounds_of(unit)
        if isinstance(budget, bool) or not isinstance(budget, (int, float)) \
                or not low <= budget <= high:
            what = "bytes" if unit == "bytes" else "a share of the parameters"
            raise ValueError(f"budget must be {what} in [{low:g}, {high:g}] (the slider's "
                             f"range for unit={unit!r}), got budget={budget!r}")

    def _default_budget(self, unit: str) -> float:
        """Bytes: halfway between inference alone and the full update; a share: 10%."""
        if unit == "share":
            return 0.1
        low, high = self._bounds_of(unit)
        return float(round((low + high) / 2 / _KIB) * _KIB)

    def _configure_budget(self, unit: str, value: float) -> None:
        """Set the slider's range, step, label and value for ``unit`` (no update runs)."""
        low, high = self._bounds_of(unit)
        slider = self.controls["budget"]
        self._silent = True
        try:
            if high >= slider.min:  # never min > max on the way
                slider.max, slider.min = high, low
            else:
                slider.min, slider.max = low, high
            # bytes: any byte count (a plan's peak exactly); share: 0.1% steps
            slider.step = 1 if unit == "bytes" else _SHARE_STEP
            slider.readout_format = ",.0f" if unit == "bytes" else ".1%"
            slider.description = ("budget (bytes, training peak)" if unit == "bytes"
                                  else "budget (share of the parameters)")
            slider.value = min(max(float(value), low), high)
        finally:
            self._silent = False
        self._unit = unit

    def _converted(self, unit: str) -> float:
        """The budget in ``unit`` that the shown plan just meets: bytes, its training peak;
        a share, the smallest on the slider's grid whose parameters cover what it trains
        (so the plan found there is at least as good by the table)."""
        if unit == "bytes":
            return float(self.report.peak_bytes)
        trained = self.plan.trainable_numel
        share = max(1, math.ceil(trained / self.total_params / _SHARE_STEP - 1e-9))
        while share * _SHARE_STEP < 1 and budget_params(
                self.total_params, share * _SHARE_STEP) < trained:
            share += 1
        return min(1.0, round(share * _SHARE_STEP, 6))

    def _on_change(self, change: dict) -> None:
        if self._silent:
            return
        if change["owner"] is self.controls["unit"] and change["new"] != self._unit:
            self._configure_budget(change["new"], self._converted(change["new"]))
        self.update()

    # ------------------------------------------------------------------ the answer
    def _search(self, unit: str, budget: float) -> Any:
        """``odt.sparse.search`` under the table's settings, once per (unit, budget); a
        budget between two searched ones whose plans are equal takes that plan without a
        search (a larger budget never gives a smaller gain, so the gain between them is
        the same)."""
        key = round(budget, 6)
        known = self._results.setdefault(unit, {})
        if key in known:
            return known[key]
        below = max((b for b in known if b < key), default=None)
        above = min((b for b in known if b > key), default=None)
        if below is not None and above is not None \
                and known[below].plan == known[above].plan:
            return known[below]
        s = self.settings
        kwargs = {"budget_bytes": int(budget)} if unit == "bytes" else {"budget_share": budget}
        known[key] = search(self.model, table=self.table, engine=s["engine"],
                            optimizer=s["optimizer"], batch_size=s["batch_size"], **kwargs)
        return known[key]

    def update(self) -> None:
        """Search (or look up) the plan for the budget, estimate and fit it, show the numbers;
        then draw the figures (``response_s``: seconds until the numbers were shown)."""
        start = time.perf_counter()
        unit, budget = self._unit, float(self.controls["budget"].value)
        dev = get_device(self.controls["device"].value)
        self.result = self._search(unit, budget)
        self.plan = self.result.plan
        self.report = self.result.report
        self.fit = dev.fit(self.report)
        self.predicted_acc = self.table.baseline_acc + self.result.predicted_gain
        self._show(unit, budget, dev)
        self.response_s = time.perf_counter() - start
        self._request_draw()

    @staticmethod
    def _budget_bytes(unit: str, budget: float) -> int | None:
        """The bytes the search holds a plan's peak to (None under a share of parameters)."""
        return None if unit == "share" else int(budget)

    def _budget_text(self, unit: str, budget: float, short: bool = False) -> str:
        if unit == "bytes":
            return format_bytes(budget)
        if short:
            return f"{budget:.1%} of params"
        return (f"{budget:.1%} of the parameters ({budget_params(self.total_params, budget):,}"
                f" of {self.total_params:,})")

    def _scheme_text(self) -> str:
        res = self.result
        parts = [f"biases of the last {res.biases} layers"] if res.biases else []
        parts += [f"{short_layer_name(layer)} weights at {ratio:.3g}"
                  for layer, ratio in res.weights]
        return ", ".join(parts) or "no update (inference alone)"

    def _show(self, unit: str, budget: float, dev: Any) -> None:
        r, p = self.report, self.plan
        self.summary.value = (
            f"budget <b>{self._budget_text(unit, budget)}</b>: "
            f"{html.escape(self._scheme_text())}.<br>The plan trains "
            f"{p.trainable_numel:,} of {p.total_numel:,} parameters "
            f"(<b>{p.trainable_share:.1%}</b>); training memory peak "
            f"<b>{format_bytes(r.peak_bytes)}</b> ({r.peak_bytes:,} B) at batch "
            f"{r.batch_size}, {html.escape(self.settings['optimizer'])} on the "
            f"{html.escape(self.settings['engine'])} engine")
        color = "green" if self.fit.fits else "crimson"
        self.verdict.value = (f"<span style='color:{color}'>"
                              f"{html.escape(self.fit.verdict)}</span>")
        self._show_accuracy()

    def _show_accuracy(self) -> None:
        rows = "".join(
            f"<tr><td>{html.escape(label)}</td><td>{format_bytes(t.peak_bytes)}</td>"
            f"<td>{100 * t.predicted:.1f}%</td><td><b>{100 * t.accuracy:.1f}%</b></td></tr>"
            for label, t in self.trained.items())
        self.accuracy.value = (
            f"predicted accuracy <b>{100 * self.predicted_acc:.1f}%</b> (no training "
            f"{100 * self.table.baseline_acc:.1f}% + summed gains "
            f"{100 * self.result.predicted_gain:+.1f} points"
            + ("; summed gains overstate a combined update: above 100%" if
               self.predicted_acc > 1 else "") + ")"
            + (f"<table><tr><th>trained plan</th><th>peak</th><th>predicted</th>"
               f"<th>measured</th></tr>{rows}</table>" if rows else
               "; no plan trained yet: <i>train this plan</i> measures it"))

    # ------------------------------------------------------------------ figures
    def _request_draw(self) -> None:
        """Draw now, or, in a running event loop (a notebook kernel), shortly after the
        numbers went out: one draw of the latest state for a burst of changes."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.draw()
            return
        if self._draw_loop is not loop:  # none pending in this loop yet
            self._draw_loop = loop
            loop.call_later(DRAW_DELAY_S, self._deferred_draw)

    def _deferred_draw(self) -> None:
        self._draw_loop = None
        try:
            self.draw()
        except Exception as err:  # noqa: BLE001 - shown in place, not lost in a log
            self.status.value = f"<b>could not draw</b>: {html.escape(repr(err))}"

    def draw(self) -> None:
        """Redraw the three figures for what is shown now (``draw_s``: seconds it took)."""
        start = time.perf_counter()
        unit, budget = self._unit, float(self.controls["budget"].value)
        label = f"≤ {self._budget_text(unit, budget, short=True)}"
        budget_bytes = self._budget_bytes(unit, budget)
        figures = (
            (self.plan_plot, sparse_plan_layers(self.plan, title=f"plan for {label}")),
            (self.memory_plot, memory_bars({label: self.report}, budget_bytes=budget_bytes,
                                           figsize=(4.6, 2.9))),
            (self.accuracy_plot, accuracy_vs_memory(
                {k: (t.peak_bytes, t.accuracy) for k, t in self.trained.items()},
                predicted={label: (self.report.peak_bytes, self.predicted_acc)},
                budget_bytes=budget_bytes,
                baseline=self.table.baseline_acc, figsize=(4.6, 3.0))),
        )
        for out, fig in figures:
            out.outputs = (png_output(fig, "budget explorer figure"),)
            plt.close(fig)
        self.draw_s = time.perf_counter() - start

    # ------------------------------------------------------------------ training
    def train_plan(self) -> TrainedPoint:
        """Train the shown plan for real on a copy of the model (the table's optimizer, lr
        and batch size, ``epochs``, ``seed``), add its point and redraw."""
        label = f"≤ {self._budget_text(self._unit, self.controls['budget'].value, short=True)}"
        plan, peak, predicted = self.plan, self.report.peak_bytes, self.predicted_acc
        self.train_button.disabled = True
        self.status.value = f"training the plan for {html.escape(label)} ..."
        try:
            s = self.settings
            history = train(copy.deepcopy(self.model), self.task, plan, epochs=self.epochs,
                            lr=s["lr"], optimizer=s["optimizer"],
                            batch_size=s["train_batch_size"], seed=self.seed,
                            engine=s["engine"], progress=False)
        finally:
            self.train_button.disabled = False
        point = TrainedPoint(plan, peak, float(history.test_acc[-1]), predicted, history)
        self.trained[label] = point
        self.status.value = (f"trained the plan for {html.escape(label)}: "
                             f"{100 * point.accuracy:.1f}% after {self.epochs} epochs")
        self._show_accuracy()
        self._request_draw()
        return point


def budget_explorer(model_name: str = "mcunet-tiny", task: str = "digits-shift",
                    device: str = "stm32f746", budget: float | None = None,
                    unit: str = "bytes", *, table: Any = None, epochs: int | None = None,
                    seed: int | None = None) -> BudgetExplorer:
    """The budget explorer for pretrained ``model_name`` fine-tuned on ``task``.

    ``budget``: bytes of training memory (``unit="bytes"``) or a share of the parameters
    in (0, 1] (``unit="share"``); None starts halfway (bytes) or at 10%. ``table``: a
    ContributionTable (default: ``odt.sparse.contributions`` of the model on the task,
    the cached one where it exists). ``epochs`` and ``seed`` of the train button default
    to the table's.
    """
    check_choice("model", model_name, names())
    check_choice("unit", unit, UNITS)
    get_device(device)  # an unknown device fails now, with the valid names
    loaded = load(task) if isinstance(task, str) else task
    table = contributions(_pretrained(model_name), loaded) if table is None else table
    settings = table.settings_dict
    epochs = check_positive_int("epochs", settings["epochs"] if epochs is None else epochs)
    seed = check_seed("seed", settings["seed"] if seed is None else seed)
    return BudgetExplorer(model_name=model_name, task=loaded, table=table, device=device,
                          unit=unit, budget=budget, epochs=epochs, seed=seed)
