"""The committed results of a benchmark, as the labs read them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def benchmark_results(relative: Path, script: str, path: str | Path | None = None) -> dict[str, Any]:
    """The JSON at ``relative`` (e.g. benchmarks/results/sparse.json), found from the source
    tree or from the working directory and its parents; or ``path``. ``script`` is what
    writes it, named in the error when it is missing."""
    if path is not None:
        return json.loads(Path(path).read_text())
    places = [Path(__file__).resolve().parents[2], Path.cwd(), *Path.cwd().parents]
    for root in places:
        if (root / relative).is_file():
            return json.loads((root / relative).read_text())
    raise FileNotFoundError(f"{relative} not found from {places[0]} or {Path.cwd()}; run "
                            f"python {script}, or pass path=")
