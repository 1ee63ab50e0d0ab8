"""Lab 06 (the capstone) as a course uses it: two solved and checked exercises whose stubs
say "Not done yet", stored outputs that back every number the prose cites, widget and figure
cells that nbval does not compare followed by cells that assert what they show."""

from __future__ import annotations

import contextlib
import io
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import odtkit as odt

LAB = Path(__file__).resolve().parents[1] / "labs" / "06_capstone.ipynb"
# numbers the prose cites; each must be printed by a compared cell (and is asserted there)
CITED = ("57 us", "64.7 us", "319 KiB", "320 KiB", "22,886", "57,170", "450 KiB", "91,544 B",
         "517 ms", "262 ms", "17,950", "71,800 B", "9.85 ms", "45,772", "262 training steps")


@pytest.fixture(scope="module")
def cells():
    return json.loads(LAB.read_text())["cells"]


def _text(cell) -> str:
    return "".join("".join(o.get("text", "")) for o in cell.get("outputs", []))


def _compared(cell) -> bool:
    return cell["cell_type"] == "code" and "NBVAL_IGNORE_OUTPUT" not in "".join(cell["source"])


def test_every_cited_number_is_in_the_prose_and_a_compared_output(cells):
    prose = " ".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    printed = " ".join(_text(c) for c in cells if _compared(c))
    asserted = " ".join(line for c in cells if c["cell_type"] == "code"
                        for line in "".join(c["source"]).splitlines()
                        if line.lstrip().startswith("assert "))
    for number in CITED:
        assert number in prose, number
        assert number in printed, number
        # the cited text itself, or its digits as a literal (22_886; a bare 262 compared with ==)
        digits = number.split()[0]
        literal = digits.replace(",", "_") if "," in digits else f"== {digits}"
        assert number in asserted or re.search(rf"{re.escape(literal)}\b", asserted), number


def test_widget_and_figure_cells_are_ignored_and_followed_by_checks(cells):
    code = [c for c in cells if c["cell_type"] == "code"]
    ignored = [i for i, c in enumerate(code) if not _compared(c)]
    assert len(ignored) == 2  # the figure and the explorer
    figure, widget = (code[i] for i in ignored)
    assert "round_time_figure" in "".join(figure["source"])
    assert "".join(figure["source"]).rstrip().endswith("plt.show()")
    after = cells[cells.index(figure) + 1]
    assert after["cell_type"] == "markdown" and "".join(after["source"]).startswith("Bars:")
    assert "capstone_explorer" in "".join(widget["source"]) and not widget["outputs"]
    drive = code[ignored[1] + 1]
    assert 'explorer.device.value = "nrf52840"' in "".join(drive["source"])
    assert _text(drive).startswith("device           nrf52840")
    assert "assert" in "".join(code[ignored[1] + 2]["source"])


def test_stored_as_committed(cells):
    nb = json.loads(LAB.read_text())
    assert nb["metadata"]["kernelspec"]["name"] == "python3" and "widgets" not in nb["metadata"]
    for cell in cells:
        assert "execution" not in cell.get("metadata", {})
        for out in cell.get("outputs", []):
            assert "application/vnd.jupyter.widget-view+json" not in out.get("data", {})
    assert LAB.read_text().endswith("}\n")


def _exercises(cells):
    code = [c for c in cells if c["cell_type"] == "code"]
    return [("".join(c["source"]), _text(c)) for c in code if "# BEGIN SOLUTION" in "".join(c["source"])]


def _stub(source: str) -> str:
    """The solution replaced by None for each name it assigns (the student's view)."""
    head, rest = source.split("# BEGIN SOLUTION\n")
    solution, tail = rest.split("# END SOLUTION\n")
    names = re.findall(r"^(\w+) =", solution, flags=re.M)
    return head + "".join(f"{n} = None\n" for n in names) + tail


def _run(code: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(code, {"odt": odt, "torch": torch, "math": math, "np": np})  # noqa: S102
    return out.getvalue()


def test_two_exercises_pass_with_their_solution_and_wait_for_a_stub(cells):
    exercises = _exercises(cells)
    assert len(exercises) == 2
    for source, stored in exercises:
        assert re.search(r"odt\.lab\.check_round_(bytes|time)\(", source)
        assert stored.startswith("Correct: ")
        assert _run(source).startswith("Correct: ")
        stub = _stub(source)
        assert "# BEGIN SOLUTION" not in stub
        assert _run(stub).startswith("Not done yet: ")
