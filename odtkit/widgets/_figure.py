"""A matplotlib figure as the content of an ipywidgets Output, shared by the explorers."""

from __future__ import annotations

import base64
import io
from typing import Any


def png_output(fig: Any, label: str) -> dict:
    """``fig`` as one display_data output: a PNG at 100 dpi (the inline backend's, so text
    reads at the size the notebook shows it) and ``label`` as its text fallback."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    png = base64.b64encode(buffer.getvalue()).decode("ascii")
    return {"output_type": "display_data", "metadata": {},
            "data": {"image/png": png, "text/plain": f"<{label}>"}}
