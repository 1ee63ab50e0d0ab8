"""Every lab's master notebook holds at least two exercises, each solved between
`# BEGIN SOLUTION` / `# END SOLUTION` lines (so that a script can turn them into stubs) and
each checked by an `odt.lab.check_*` call whose stored output says "Correct"."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import odtkit as odt

LABS = Path(__file__).resolve().parents[1] / "labs"
DONE = ["00_getting_started", "01_memory_anatomy", "02_quantized_training",
        "03_sparse_update", "04_neuron_selection", "05_gradient_compression"]


def _exercises(name: str) -> list[tuple[str, str]]:
    """(source, stored text) of each code cell holding a solution, with the check cell: the
    same cell, or the next one when the solution cell has no check call."""
    cells = [c for c in json.loads((LABS / f"{name}.ipynb").read_text())["cells"]
             if c["cell_type"] == "code"]
    found = []
    for i, cell in enumerate(cells):
        source = "".join(cell["source"])
        if "# BEGIN SOLUTION" not in source:
            continue
        checked = cell if "odt.lab.check_" in source else cells[i + 1]
        text = "".join("".join(o.get("text", "")) for o in checked["outputs"])
        found.append((source + "".join(checked["source"]) * (checked is not cell), text))
    return found


@pytest.mark.parametrize("name", DONE)
def test_two_solved_and_checked_exercises(name):
    exercises = _exercises(name)
    assert len(exercises) >= 2, f"{name}: {len(exercises)} exercise(s)"
    for source, text in exercises:
        begin, end = source.index("# BEGIN SOLUTION\n"), source.index("# END SOLUTION")
        assert begin < end and source[begin:end].count("\n") >= 2  # a solution in between
        check = re.search(r"odt\.lab\.(check_\w+)\(", source[end:])
        assert check and hasattr(odt.lab, check.group(1)), source
        assert text.startswith("Correct") or "\nCorrect: " in text, (name, text)
