"""What is live at the peak: the simulated step's live bytes split into components.

The step model (``_step``) keeps running totals of the bytes that are weights, that a
backward node holds (saved activations), that are the parameters' ``.grad`` and that are
optimizer state; every point it appends to its timeline records them. Whatever else is
live at a point is transient: the input and output of the op being computed, gradients
of activations in flight, the logits, labels and loss, the input batch when no node
keeps it, kernel outputs freed a moment later. The five components of the peak point
add up to the peak exactly, since the transient part is the rest of the same total.
"""

from __future__ import annotations

from collections.abc import Sequence

# in the order a stacked bar draws them, bottom to top
PEAK_COMPONENTS = ("weights", "saved activations", "transient", "gradients", "optimizer state")


def from_categories(by_category: dict[str, int]) -> dict[str, int]:
    """The components of a step whose peak is its four categories (int8 and fp8 device
    bytes): every activation kept, nothing transient counted."""
    return dict(zip(PEAK_COMPONENTS, (by_category["weights"], by_category["activations"], 0,
                                      by_category["gradients"], by_category["optimizer"]),
                    strict=True))


class LiveParts:
    """Running bytes by component, and the op the step is at (for naming the peak)."""

    def __init__(self, weights_bytes: int) -> None:
        self.weights = weights_bytes
        self.saved = self.grads = self.state = 0
        self.op = -1  # index of the op being run or differentiated; -1 outside (the step)
        self._saved: set[int] = set()

    def save(self, storage: int, nbytes: int) -> None:
        """``storage`` (live) is now held by a backward node."""
        if storage not in self._saved:
            self._saved.add(storage)
            self.saved += nbytes

    def unsave(self, storage: int, nbytes: int) -> None:
        """The last node holding ``storage`` let go of it."""
        if storage in self._saved:
            self._saved.discard(storage)
            self.saved -= nbytes

    def clear_saved(self) -> None:
        """The graph is gone: nothing is held for backward any more."""
        self._saved.clear()
        self.saved = 0

    def add_state(self, nbytes: int) -> None:
        """The optimizer (or the loss scaler) made ``nbytes`` of state."""
        self.state += nbytes

    def snapshot(self) -> tuple[int, int, int, int]:
        return self.saved, self.grads, self.state, self.op


class PartsTimeline(list):
    """A step's timeline (("phase: event", live bytes) points) that also records, with
    each point, the components of ``parts`` at that moment."""

    def __init__(self, parts: LiveParts) -> None:
        super().__init__()
        self.parts = parts
        self.snapshots: list[tuple[int, int, int, int]] = []

    def append(self, point: tuple[str, int]) -> None:
        super().append(point)
        self.snapshots.append(self.parts.snapshot())


def at_peak(timeline: PartsTimeline, op_names: Sequence[str]) -> tuple[dict[str, int], str]:
    """The components of the first point of highest live bytes, and where it is, e.g.
    "backward of features.3.conv.0 (convolution_backward)". ``op_names[i]`` names the
    layer of op ``i`` ("" for none)."""
    if not timeline:
        return {}, ""
    k = max(range(len(timeline)), key=lambda j: timeline[j][1])
    label, live = timeline[k]
    saved, grads, state, op = timeline.snapshots[k]
    weights = timeline.parts.weights
    transient = live - weights - saved - grads - state
    if transient < 0:
        raise AssertionError(f"peak components exceed the peak at {label!r}: weights "
                             f"{weights}, saved {saved}, gradients {grads}, state {state} "
                             f"> live {live}")
    parts = dict(zip(PEAK_COMPONENTS, (weights, saved, transient, grads, state), strict=True))
    phase, _, event = label.partition(": ")
    if phase == "step":
        return parts, f"the optimizer step ({event})"
    layer = op_names[op] if 0 <= op < len(op_names) else ""
    where = f"{phase} of {layer}" if layer else phase
    return parts, f"{where} ({event})"
