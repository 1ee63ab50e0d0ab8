"""nbval runs every notebook under labs/, the student edition (labs/student/) too. There every
cell but the exercises is stored as in its master, so nbval compares it as usual (a cell that
depended on a solved exercise would differ or raise there). Exercise cells are stored unrun, so
nbval runs them without comparing; here each that calls a check must print the check's
"Not done yet" message (nbval itself fails a cell that raises)."""

from __future__ import annotations

import pytest

# odtkit.lab.student's names, written out so that collecting a notebook imports no torch
# (tests/test_student_edition.py holds them equal)
STUDENT_DIR, CHECK_CALL, NOT_DONE = "student", "odt.lab.check_", "Not done yet"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    result = yield
    cell = getattr(item, "cell", None)
    if (cell is not None and item.path.parent.name == STUDENT_DIR
            and cell.get("execution_count") is None and CHECK_CALL in cell.source):
        text = "".join(out.get("text", "") for out in getattr(item, "test_outputs", []))
        if NOT_DONE not in text or "Correct" in text:
            pytest.fail(f"{item.path.name}, cell {cell.get('id', '?')}: an unsolved exercise "
                        f"must print its check's {NOT_DONE!r} message, it printed:\n{text}",
                        pytrace=False)
    return result
