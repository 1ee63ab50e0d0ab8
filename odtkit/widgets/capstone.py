"""Explorer: choose a catalogue device; the capstone's report card follows.

    ex = odt.widgets.capstone_explorer(device="stm32f746")
    ex                          # in a notebook: the device menu and the report card
    ex.device.value = "nrf52840"  # headless: the card is recomputed for the new device
    ex.card, ex.summary()

A thin view over ``odtkit.lab.Capstone``: the precision, the searched plan, the fleet
compressor and the training all come from its cached calls, so a device seen before, or
one whose plan was trained before, answers without training again.
"""

from __future__ import annotations

from typing import Any

import ipywidgets as w

__all__ = ["CapstoneExplorer", "capstone_explorer"]


class CapstoneExplorer:
    """The ``device`` Dropdown (the devices the capstone can plan for) and the report card
    it shows (``card``, a ``ReportCard``; ``summary()`` its text); ``widget`` is the box."""

    def __init__(self, capstone: Any, device: str) -> None:
        self.capstone = capstone
        options = capstone.devices()
        self.device = w.Dropdown(options=options, value=capstone.check_device(device),
                                 description="device")
        self.view = w.HTML()
        self.card: Any = None
        self.device.observe(self._update, names="value")
        self.widget = w.VBox([self.device, self.view])
        self._update()

    def _update(self, change: Any = None) -> None:
        self.card = self.capstone.card(self.device.value)
        self.view.value = self.card._repr_html_()

    def summary(self) -> str:
        """The report card of the shown device, as text."""
        return str(self.card)

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)


def capstone_explorer(capstone: Any = None, *, device: str = "stm32f746",
                      epochs: int = 1) -> CapstoneExplorer:
    """The explorer over ``capstone`` (default: a new ``odtkit.lab.Capstone`` training
    ``epochs`` per plan), showing ``device`` first; an unknown or unplannable device raises
    a ValueError naming the devices it can show."""
    if capstone is None:
        from ..lab import Capstone

        capstone = Capstone(epochs=epochs)
    return CapstoneExplorer(capstone, device)
