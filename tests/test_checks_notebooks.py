"""Every lab's master notebook holds at least two exercises, each solved between
`# BEGIN SOLUTION` / `# END SOLUTION` lines (so that a script can turn them into stubs) and
each checked by an `odt.lab.check_*` call whose stored output says "Correct"."""

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
from odtkit.lab.student import stub

LABS = Path(__file__).resolve().parents[1] / "labs"
DONE = [path.stem for path in sorted(LABS.glob("[0-9][0-9]_*.ipynb"))]  # every master


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


def _run(code: str, namespace: dict) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(code, dict(namespace))  # noqa: S102 - the lab's own cells
    return out.getvalue()


def test_the_stub_rule_on_hand_made_cells():
    """The stub the student edition shows (odtkit.lab.student.stub), on cells written out by
    hand: the names the check reads become None, a function body raises, both after the
    `# YOUR CODE HERE` mark; the lines around the solution stay."""
    top = "x = 1\n# BEGIN SOLUTION\na = 2 * 3\nb = [1,\n     2]\n# END SOLUTION\nprint(a, b)\n"
    assert stub(top) == "x = 1\n# YOUR CODE HERE\na = None\nb = None\nprint(a, b)\n"
    helper = "# BEGIN SOLUTION\nn = 3\nanswer = n * 4\n# END SOLUTION\ncheck(answer)\n"
    assert stub(helper) == "# YOUR CODE HERE\nanswer = None\ncheck(answer)\n"
    inner = "def f(x):\n    # BEGIN SOLUTION\n    return x\n    # END SOLUTION\n\nf(1)\n"
    assert stub(inner) == ('def f(x):\n    # YOUR CODE HERE\n    raise NotImplementedError("your turn")'
                           "\n\nf(1)\n")


@pytest.mark.parametrize("name", DONE)
def test_solutions_pass_and_stubs_are_not_done(name):
    """Each exercise cell run alone: the stored solution prints "Correct", its stub "Not done
    yet" (never an exception). Cells that need the notebook's trained state (lab 03's scheme,
    checked by training) are run as stubs only; their stored "Correct" is asserted above."""
    torch.set_num_threads(1)
    namespace = {"odt": odt, "torch": torch, "math": math, "np": np}
    for source, _ in _exercises(name):
        needs_state = "EXERCISE_BUDGET" in source
        if needs_state:
            namespace = {**namespace, "EXERCISE_BUDGET": 1, "pretrained": None, "task": None}
        else:
            assert "Correct: " in _run(source, namespace), source
        text = _run(stub(source), namespace)
        assert "Not done yet: " in text and "Correct" not in text, (source, text)
