"""What a reader sees of a figure at the size a notebook shows it (100 dpi inline):
the series of each plot, their colour and marker, the axis scales, the smallest text."""

from __future__ import annotations

from matplotlib.colors import to_hex
from matplotlib.figure import Figure
from matplotlib.text import Text

NOTEBOOK_DPI = 100  # the inline backend's figure.dpi: figsize (in) x 100 = pixels shown


def series(ax) -> list:
    """The labelled lines of ``ax`` (a legend entry each; helper artists start with '_')."""
    return [line for line in ax.get_lines() if not line.get_label().startswith("_")]


def styles(ax) -> list[tuple[str, str]]:
    """(colour, marker) of each labelled line."""
    return [(to_hex(line.get_color()), str(line.get_marker())) for line in series(ax)]


def smallest_text_px(fig: Figure) -> float:
    """The smallest visible, non-empty text of ``fig``, in pixels at the notebook's dpi."""
    sizes = [t.get_fontsize() for t in fig.findobj(Text) if t.get_visible() and t.get_text()]
    return min(sizes) * NOTEBOOK_DPI / 72


def legend_text_px(ax) -> float:
    legend = ax.get_legend()
    return min(t.get_fontsize() for t in legend.get_texts()) * NOTEBOOK_DPI / 72
