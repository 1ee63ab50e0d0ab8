"""Explorer: pick a compressor, its density or rank, a link and the number of workers;
see bytes per round, time per round and the accuracy curve of a small simulated run beside
the dense fp32 run's, on axes fixed over every setting (epochs 1..N, 0-100 %).

    ex = odt.widgets.compression_explorer()
    ex                      # in a notebook: the controls and the figure
    ex.density.value = 0.01 # headless: the shown numbers follow
    ex.bytes_per_round, ex.time_per_round_s, ex.final_accuracy

Runs are cached per (compressor, density, rank, error feedback, workers): moving back to
a setting is instant, and changing only the link re-times without training.
"""

from __future__ import annotations

import functools
from typing import Any

import ipywidgets as w
import matplotlib.pyplot as plt

from ..distributed import simulate
from ..distributed.federated import worker_round_time
from ..lab import lab_model
from ..viz.compression import accuracy_against_dense

__all__ = ["CompressionExplorer", "compression_explorer"]

_DENSITY = {"topk", "randomk", "dgc"}
_CHOICES = ("none", "fp16", "bf16", "topk", "randomk", "dgc", "qsgd", "terngrad", "signsgd",
            "ef-signsgd", "powersgd")


class CompressionExplorer:
    """Controls (``compressor``, ``density``, ``rank``, ``error_feedback``, ``link``,
    ``workers``) and shown values (``bytes_per_round``, ``time_per_round_s``,
    ``final_accuracy``, ``summary``, ``plot``, the last ``figure``); ``widget`` is the
    whole box."""

    def __init__(self, task: Any, *, epochs: int, device: str, links: tuple[str, ...],
                 seed: int, compressor: str, density: float, workers: int) -> None:
        from ..hardware import link as get_link

        for name in links:
            get_link(name)  # an unknown link fails now, with the valid names
        self.task, self.epochs, self.device, self.seed = task, epochs, device, seed
        self.model = lab_model(task, seed=seed)
        self.compressor = w.Dropdown(options=_CHOICES, value=compressor, description="compressor")
        self.density = w.FloatLogSlider(value=density, base=10, min=-3, max=0, step=0.25,
                                        description="density", readout_format=".3g")
        self.rank = w.IntSlider(value=2, min=1, max=8, description="rank")
        self.error_feedback = w.Checkbox(value=True, description="error feedback")
        self.link = w.Dropdown(options=links, value=links[0], description="link")
        self.workers = w.IntSlider(value=workers, min=1, max=8, description="workers")
        self.summary = w.HTML()
        self.plot = w.Output()
        self.bytes_per_round = self.time_per_round_s = self.final_accuracy = float("nan")
        self.compute_s = self.comm_s = float("nan")
        self.figure: Any = None
        self._run = functools.lru_cache(maxsize=32)(self._simulate)
        controls = (self.compressor, self.density, self.rank, self.error_feedback, self.link,
                    self.workers)
        for control in controls:
            control.observe(self._on_change, names="value")
        self.widget = w.VBox([w.HBox([w.VBox(list(controls[:3])), w.VBox(list(controls[3:]))]),
                              self.summary, self.plot])
        self.update()

    def _simulate(self, compressor: str, density: float, rank: int, ef: bool,
                  workers: int) -> Any:
        kwargs: dict[str, Any] = {}
        if compressor in _DENSITY:
            kwargs["density"] = density
        if compressor == "powersgd":
            kwargs["rank"] = rank
        if compressor == "dgc":
            kwargs.update(optimizer="sgd", warmup_epochs=min(4, max(self.epochs - 1, 0)))
        elif ef:  # update() passes False where feedback is built in or pointless
            kwargs["error_feedback"] = True
        if compressor == "signsgd":
            kwargs["scale"] = "mean"
        return simulate(self.model, self.task, workers=workers, compressor=compressor,
                        epochs=self.epochs, seed=self.seed, **kwargs)

    def _on_change(self, change: dict) -> None:
        self.update()

    def update(self) -> None:
        """Re-run (or fetch from the cache) and refresh the shown numbers and figure."""
        name = self.compressor.value
        self.density.disabled = name not in _DENSITY
        self.rank.disabled = name != "powersgd"
        self.error_feedback.disabled = name in ("none", "dgc", "ef-signsgd")
        # knobs a compressor ignores do not enter the cache key: no needless re-run
        hist = self._run(name, float(self.density.value) if name in _DENSITY else 0.0,
                         int(self.rank.value) if name == "powersgd" else 0,
                         bool(self.error_feedback.value) and not self.error_feedback.disabled,
                         int(self.workers.value))
        t = worker_round_time(hist, self.model, device=self.device, link=self.link.value)
        self.bytes_per_round = sum(hist.up_bytes_per_round) / hist.rounds
        self.time_per_round_s, self.compute_s, self.comm_s = t.total_s, t.compute_s, t.comm_s
        self.final_accuracy = hist.test_acc[-1]
        self.summary.value = (
            f"<b>{hist.compressor}</b>, {hist.workers} workers: "
            f"<b>{self.bytes_per_round:,.0f} B</b> per worker per round "
            f"({hist.compression_ratio:,.1f}x fewer than fp32) &middot; "
            f"round on {self.device} over {self.link.value}: <b>{t.total_s:.3g} s</b> "
            f"(compute {t.compute_s:.2g} s, communication {t.comm_s:.3g} s) &middot; "
            f"test accuracy after {len(hist.test_acc)} epochs: "
            f"<b>{100 * self.final_accuracy:.1f}%</b>")
        dense = self._run("none", 0.0, 0, False, int(self.workers.value))
        self.plot.clear_output(wait=True)
        with self.plot:
            self.figure = accuracy_against_dense(hist, dense, epochs=self.epochs,
                                                 name=hist.compressor)
            plt.show()
            plt.close(self.figure)

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)


def compression_explorer(task: Any = None, *, epochs: int = 6, device: str = "raspberry-pi-4",
                         links: tuple[str, ...] = ("ble", "lte", "wifi", "lorawan"),
                         seed: int = 0, compressor: str = "topk", density: float = 0.01,
                         workers: int = 4) -> CompressionExplorer:
    """The explorer on ``task`` (default: lab 05's digits) with lab 05's model.

    ``epochs`` per cached run (a few seconds each on a laptop core).
    """
    from ..datasets import load
    from ..lab import LAB_TASK

    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a positive integer, got {epochs!r}")
    return CompressionExplorer(load(LAB_TASK) if task is None else task, epochs=epochs,
                               device=device, links=tuple(links), seed=seed,
                               compressor=compressor, density=density, workers=workers)
