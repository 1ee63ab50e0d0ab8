"""The value a memory report is: bytes by category, the peak, per-layer rows; compare."""

from __future__ import annotations

import html
from dataclasses import dataclass, field

from .._checks import check_choice
from ..models.summary import LayerRow
from ..training.optim import check_optimizer
from ..units import format_bytes
from ._peak import PEAK_COMPONENTS
from ._precision import ELEMENT_BYTES

CATEGORIES = ("weights", "gradients", "optimizer", "activations")
ENGINES = ("pytorch", "lean")
METHODS = ("estimate", "measure")


@dataclass(frozen=True)
class LayerMemory(LayerRow):
    """One row of a report: a layer call (or a functional op outside layers)."""

    saved_bytes: int  # bytes first kept for backward by this layer (shared tensors count once)
    trainable: bool


@dataclass(frozen=True)
class MemoryReport:
    """Bytes of one training step by category, its peak, and where activations are kept."""

    by_category: dict[str, int]
    peak_bytes: int
    frozen_weight_bytes: int  # parameters that do not train + buffers the step never writes
    forward_macs: int
    backward_macs: int
    batch_size: int
    engine: str
    optimizer: str
    method: str
    rows: tuple[LayerMemory, ...] = ()
    timeline: tuple[tuple[str, int], ...] = ()  # ("phase: event", live bytes), in order
    scheme: str = ""
    precision: str = "fp32"
    rss_peak_bytes: int | None = None  # measure only: the process's peak resident memory
    # the allocator's peak, kernel scratch included: measured by torch.profiler's memory
    # events, estimated as the tensor peak plus the scratch of the ops whose scratch is
    # known (None where neither applies: int8 and fp8 device bytes)
    allocator_peak_bytes: int | None = None
    notes: tuple[str, ...] = field(default=())
    # what is live at the tensor peak, by component (PEAK_COMPONENTS; they sum to
    # peak_bytes), and where the peak is ("backward of conv1 (convolution_backward)");
    # the estimate fills both, a measurement leaves them empty
    peak_components: dict[str, int] = field(default_factory=dict)
    peak_at: str = ""

    def __post_init__(self) -> None:
        if set(self.by_category) != set(CATEGORIES):
            raise ValueError(f"by_category needs exactly the keys {CATEGORIES}, "
                             f"got {tuple(self.by_category)}")
        object.__setattr__(self, "by_category", {k: self.by_category[k] for k in CATEGORIES})
        for name, value in [*self.by_category.items(), ("peak_bytes", self.peak_bytes),
                            ("frozen_weight_bytes", self.frozen_weight_bytes),
                            ("forward_macs", self.forward_macs),
                            ("backward_macs", self.backward_macs)]:
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a whole number >= 0, got {value!r}")
        if self.peak_components:
            _check_components(self.peak_components, self.peak_bytes)
        check_choice("method", self.method, METHODS)
        check_choice("engine", self.engine, ENGINES)
        check_optimizer(self.optimizer)
        check_choice("precision", self.precision, tuple(ELEMENT_BYTES))

    @property
    def total_bytes(self) -> int:
        """Sum of the four categories (what a step keeps; the peak adds transients)."""
        return sum(self.by_category.values())

    def _summary_lines(self) -> list[tuple[str, str]]:
        lines = [(k, format_bytes(v)) for k, v in self.by_category.items()]
        lines += [("total", format_bytes(self.total_bytes)), ("peak", format_bytes(self.peak_bytes))]
        if self.allocator_peak_bytes is not None:
            lines.append(("allocator peak", format_bytes(self.allocator_peak_bytes)))
        lines.append(("frozen weights", format_bytes(self.frozen_weight_bytes)))
        if self.rss_peak_bytes is not None:
            lines.append(("process RSS peak", format_bytes(self.rss_peak_bytes)))
        lines.append(("MACs fwd / bwd", f"{self.forward_macs:,} / {self.backward_macs:,}"))
        lines.append(("bytes per element", ELEMENT_BYTES.get(self.precision, "?")))
        return lines

    def _title(self) -> str:
        return (f"{self.method} ({self.engine}, {self.optimizer}, scheme {self.scheme or '?'}, "
                f"{self.precision}, batch {self.batch_size})")

    def table(self, layers: bool = True) -> str:
        """Aligned text: the categories and peak, then (``layers``) bytes saved per layer."""
        out = [self._title()]
        width = max(len(k) for k, _ in self._summary_lines())
        out += [f"  {k:<{width}}  {v:>12}" for k, v in self._summary_lines()]
        if layers and self.rows:
            cells = [("layer", "type", "output", "params", "saved", "trains")] + [
                (r.name, r.type, "x".join(map(str, r.output_shape)), f"{r.params:,}",
                 format_bytes(r.saved_bytes), "yes" if r.trainable else "")
                for r in self.rows]
            widths = [max(len(c[i]) for c in cells) for i in range(6)]
            for c in cells:
                out.append("  ".join(v.rjust(w) if i in (3, 4) else v.ljust(w)
                                     for i, (v, w) in enumerate(zip(c, widths, strict=True))).rstrip())
        out += [f"note: {n}" for n in self.notes]
        return "\n".join(out)

    def __str__(self) -> str:
        return self.table(layers=False)

    def _repr_html_(self) -> str:
        esc = html.escape
        summary = "".join(f"<tr><td>{esc(k)}</td><td style='text-align:right'>{esc(v)}</td></tr>"
                          for k, v in self._summary_lines())
        rows = "".join(
            f"<tr><td>{esc(r.name)}</td><td>{esc(r.type)}</td>"
            f"<td>{'x'.join(map(str, r.output_shape))}</td>"
            f"<td style='text-align:right'>{r.params:,}</td>"
            f"<td style='text-align:right'>{esc(format_bytes(r.saved_bytes))}</td>"
            f"<td>{'yes' if r.trainable else ''}</td></tr>" for r in self.rows)
        return (f"<p><b>{esc(self._title())}</b></p><table>{summary}</table>"
                + (f"<details><summary>{len(self.rows)} layers</summary><table><tr>"
                   "<th>layer</th><th>type</th><th>output</th><th>params</th><th>saved</th>"
                   f"<th>trains</th></tr>{rows}</table></details>" if rows else ""))


def _check_components(parts: dict[str, int], peak_bytes: int) -> None:
    if tuple(parts) != PEAK_COMPONENTS:
        raise ValueError(f"peak_components needs exactly the keys {PEAK_COMPONENTS} in this "
                         f"order, got {tuple(parts)}")
    if any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in parts.values()):
        raise ValueError(f"peak_components must be whole numbers >= 0, got {parts}")
    if sum(parts.values()) != peak_bytes:
        raise ValueError(f"peak_components sum to {sum(parts.values())} bytes, not the "
                         f"peak_bytes {peak_bytes}")


def compare(est: MemoryReport, meas: MemoryReport) -> dict[str, float]:
    """Relative error (estimate - measured) / measured per category and for the peak.

    0.0 when both are 0; +inf when only the measurement is 0.
    """
    for r in (est, meas):
        if not isinstance(r, MemoryReport):
            raise TypeError(f"compare takes two MemoryReports, got {type(r).__name__}")
    pairs = [(k, est.by_category[k], meas.by_category[k]) for k in CATEGORIES]
    pairs.append(("peak", est.peak_bytes, meas.peak_bytes))
    return {k: (0.0 if a == b else (a - b) / b if b else float("inf")) for k, a, b in pairs}
