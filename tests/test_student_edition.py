"""The student edition (labs/student/): generated from the master notebooks, kept up to date
(the check fails on a stale, missing or extra notebook), each exercise a marked stub with its
outputs cleared and every other cell as in its master. That every student notebook runs and
prints "Not done yet" on each unsolved exercise is checked where nbval runs it (labs/conftest.py);
here: no master cell after an exercise reads what the exercise binds, and that hook at work."""

from __future__ import annotations

import ast
import json
import runpy
import shutil
import symtable
import zlib
from pathlib import Path
from types import SimpleNamespace

import nbformat
import pytest

from odtkit.lab import student
from odtkit.lab.student import MARK, main, render, stale, student_notebook, write

ROOT = Path(__file__).resolve().parents[1]
LABS = ROOT / "labs"
conftest = runpy.run_path(str(LABS / "conftest.py"))
MASTERS = sorted(LABS.glob("[0-9][0-9]_*.ipynb"))


def _text(cell: dict) -> str:
    return "".join(cell["source"])


def _code(source: str, outputs: list | None = None, count: int | None = 1) -> dict:
    return {"cell_type": "code", "execution_count": count, "id": f"c{zlib.crc32(source.encode())}",
            "metadata": {}, "outputs": outputs or [],
            "source": source.splitlines(keepends=True)}


def _stream(text: str) -> dict:
    return {"name": "stdout", "output_type": "stream", "text": text.splitlines(keepends=True)}


# -- 1. the committed edition is the one the committed masters give --------------------------

def test_the_committed_edition_is_up_to_date(capsys):
    assert stale(LABS) == [], "run `python -m odtkit.lab.student` and commit labs/student/"
    assert main(["--check", "--labs", str(LABS)]) == 0
    assert "up to date" in capsys.readouterr().out


@pytest.mark.parametrize("master", MASTERS, ids=lambda p: p.stem)
def test_each_student_notebook_is_its_master_with_stubbed_exercises(master):
    """Read both files as they are on disk: same metadata and cells, except that each solution
    cell shows the mark and no solution, and stores no output (so no "Correct" gives it away)."""
    ours = json.loads(master.read_text(encoding="utf-8"))
    theirs = json.loads((LABS / "student" / master.name).read_text(encoding="utf-8"))
    assert theirs["metadata"] == ours["metadata"] and len(theirs["cells"]) == len(ours["cells"])
    exercises = 0
    for mine, yours in zip(ours["cells"], theirs["cells"], strict=True):
        if "# BEGIN SOLUTION" not in _text(mine):
            assert yours == mine
            continue
        exercises += 1
        text = _text(yours)
        assert MARK in text and "SOLUTION" not in text, text
        assert yours["outputs"] == [] and yours["execution_count"] is None
        before = _text(mine)[:_text(mine).index("# BEGIN SOLUTION")]
        after = _text(mine)[_text(mine).index("# END SOLUTION\n") + len("# END SOLUTION\n"):]
        assert text.startswith(before) and text.endswith(after)  # lines around kept
    assert exercises >= 1, master.name


# -- 2. a stale, missing or extra notebook fails the check, naming it --------------------------

@pytest.fixture
def copy(tmp_path):
    """The masters copied, with their edition written beside them."""
    labs = tmp_path / "labs"
    labs.mkdir()
    for master in MASTERS:
        shutil.copy(master, labs / master.name)
    assert [path.name for path in write(labs)] == [master.name for master in MASTERS]
    return labs


def _edit(path: Path, change) -> None:
    notebook = json.loads(path.read_text(encoding="utf-8"))
    change(notebook["cells"])
    path.write_text(render(notebook), encoding="utf-8")


def _check(labs: Path, capsys) -> tuple[int, str]:
    code = main(["--check", "--labs", str(labs)])
    return code, capsys.readouterr().err


def _first(cells, predicate) -> dict:
    return next(cell for cell in cells if predicate(cell))


def test_an_edited_master_makes_its_student_notebook_stale(copy, capsys):
    first, second = MASTERS[0].name, MASTERS[1].name
    assert _check(copy, capsys)[0] == 0
    _edit(copy / first, lambda cells: _first(cells, lambda c: c["cell_type"] == "markdown")
          ["source"].append("\nOne more sentence."))
    _edit(copy / second, lambda cells: _first(cells, lambda c: "# BEGIN SOLUTION" in _text(c))
          ["source"].append("\nprint('checked')"))  # the exercise cell, after its solution
    code, err = _check(copy, capsys)
    assert code == 1
    assert f"stale: {copy / 'student' / first}" in err and f"stale: {copy / 'student' / second}" in err
    assert "python -m odtkit.lab.student" in err  # the fix
    assert sum(line.startswith("stale") for line in err.splitlines()) == 2  # only those two
    assert main(["--labs", str(copy)]) == 0  # regenerate
    assert _check(copy, capsys)[0] == 0


def test_a_new_solution_alone_leaves_the_edition_as_is(copy, capsys):
    """What the student sees is the stub: another solution (and its stored "Correct") changes
    nothing there."""
    def resolve(cells):
        cell = _first(cells, lambda c: "# BEGIN SOLUTION" in _text(c))
        at = next(i for i, line in enumerate(cell["source"]) if "# BEGIN SOLUTION" in line)
        indent = cell["source"][at][:cell["source"][at].index("#")]
        cell["source"].insert(at + 1, f"{indent}# another way to the same answer\n")
        cell["outputs"], cell["execution_count"] = [], 99
    _edit(copy / MASTERS[0].name, resolve)
    assert _check(copy, capsys)[0] == 0


def test_a_missing_or_extra_student_notebook_fails_the_check(copy, capsys):
    gone = copy / "student" / MASTERS[-1].name
    gone.unlink()
    extra = copy / "student" / "99_renamed.ipynb"
    shutil.copy(copy / "student" / MASTERS[0].name, extra)
    code, err = _check(copy, capsys)
    assert code == 1 and f"missing: {gone}" in err and f"extra: {extra}" in err
    assert set(write(copy)) == {gone, extra} and gone.exists() and not extra.exists()
    assert stale(copy) == []


def test_a_master_without_a_closing_marker_is_named(copy, capsys):
    name = MASTERS[0].name

    def unclose(cells):
        cell = _first(cells, lambda c: "# BEGIN SOLUTION" in _text(c))
        cell["source"] = [line for line in cell["source"] if "# END SOLUTION" not in line]
    _edit(copy / name, unclose)
    assert main(["--labs", str(copy)]) == 2
    err = capsys.readouterr().err
    assert name in err and "# END SOLUTION" in err and "cell" in err


def test_no_lab_folder_is_a_clear_error(tmp_path, capsys):
    assert main(["--check", "--labs", str(tmp_path / "nowhere")]) == 2
    assert "--labs" in capsys.readouterr().err


# -- 3. student notebooks run: nothing after an exercise reads what it binds -------------------

def _reads_and_binds(code: str) -> tuple[set[str], set[str]]:
    """Module-level names a statement reads (also from inside its functions and
    comprehensions) and binds, from Python's own symbol tables."""
    table = symtable.symtable(code, "<cell>", "exec")
    binds = {s.get_name() for s in table.get_symbols()
             if s.is_assigned() or s.is_imported() or s.is_namespace()}
    reads, tables = set(), [table]
    while tables:
        scope = tables.pop()
        tables += scope.get_children()
        reads |= {s.get_name() for s in scope.get_symbols()
                  if s.is_referenced() and (scope is table or s.is_global())}
    return reads, binds


def _statements(source: str) -> list[str]:
    code = "".join(line for line in source.splitlines(keepends=True)
                   if not line.lstrip().startswith(("%", "!")))
    return [ast.unparse(node) for node in ast.parse(code).body]


def dependents(notebook: dict) -> list[str]:
    """Each later cell that reads a name an exercise cell binds differently in the student
    edition (a solved answer, a solved function, the check's verdict)."""
    cells = notebook["cells"]
    found, live = [], {}
    for index, cell in enumerate(cells):
        if cell["cell_type"] != "code":
            continue
        source = _text(cell)
        for statement in _statements(source):
            reads, binds = _reads_and_binds(statement)
            found += [f"cell {index} (id {cell.get('id')}) reads {name!r}, which exercise cell "
                      f"{live[name]} binds" for name in sorted(reads & set(live))]
            for name in binds:
                live.pop(name, None)
        if "# BEGIN SOLUTION" in source:
            kept = set(_statements(student.stub(source)))
            for statement in _statements(source):
                if statement not in kept or student.CHECK_CALL in statement:
                    live |= dict.fromkeys(_reads_and_binds(statement)[1], index)
    return found


@pytest.mark.parametrize("master", MASTERS, ids=lambda p: p.stem)
def test_no_master_cell_reads_an_exercise_answer(master):
    """In the student edition the exercise binds a stub (None, a function that raises, a
    falsy verdict): a later cell that reads it would fail or differ there. Fix the master so
    that later cells compute what they need themselves."""
    assert dependents(json.loads(master.read_text(encoding="utf-8"))) == [], master.name


def test_a_cell_reading_an_exercise_answer_is_named():
    notebook = {"cells": [
        _code("import math\n# BEGIN SOLUTION\nanswer = 6 * 7\n# END SOLUTION\n"
              "verdict = odt.lab.check_answer(answer)\n"),
        _code("answer = 1\nprint(answer)\n"),            # rebinds first: fine
        _code("def f(verdict):\n    return verdict\nprint(math.pi)\n"),  # a parameter: fine
        _code("def g():\n    return answer\n"),          # reads the rebound one: fine
        _code("def h(x):\n    # BEGIN SOLUTION\n    return x\n    # END SOLUTION\n"
              "odt.lab.check_h(h)\n"),
        _code("print([h(i) for i in range(2)], verdict)\n"),
    ]}
    assert dependents(notebook) == [
        "cell 5 (id {}) reads 'h', which exercise cell 4 binds".format(notebook["cells"][5]["id"]),
        "cell 5 (id {}) reads 'verdict', which exercise cell 0 binds".format(
            notebook["cells"][5]["id"])]


def _hook(path: Path, cell: dict, printed: str):
    """labs/conftest.py's hook around nbval's run of one cell, given what the cell printed
    (nbval's cell item keeps the cell as nbformat reads it as `cell`, and what it printed as
    `test_outputs`)."""
    item = SimpleNamespace(path=path, cell=nbformat.from_dict({**cell, "source": _text(cell)}),
                           test_outputs=[{"name": "stdout", "output_type": "stream",
                                          "text": printed}] if printed else [])
    hook = conftest["pytest_runtest_call"](item)
    next(hook)
    with pytest.raises(StopIteration):
        hook.send(None)


def test_the_nbval_hook_fails_an_exercise_that_does_not_say_not_done():
    """In a student notebook, an unrun cell calling a check must print "Not done yet" (never
    "Correct"); master notebooks and other cells are nbval's alone."""
    assert (conftest["STUDENT_DIR"], conftest["CHECK_CALL"]) == (student.STUDENT_DIR,
                                                                 student.CHECK_CALL)
    import odtkit as odt  # the message a real check prints on a placeholder and on a stub

    for result in (odt.lab.check_relu_saved_bytes(None, quiet=True),
                   odt.lab.check_quantize(None, quiet=True)):
        assert result.ok is None and str(result).startswith(conftest["NOT_DONE"] + ":")
    lab = LABS / "student" / "lab.ipynb"
    exercise = _code(f"{MARK}\nx = None\nodt.lab.check_x(x)\n", count=None)
    _hook(lab, exercise, "Not done yet: fill in x\n")
    for printed in ["Correct: 42\n", "", "Not done yet, but Correct\n"]:
        with pytest.raises(pytest.fail.Exception, match=f"lab.ipynb, cell {exercise['id']}: an "
                           "unsolved exercise must print its check's 'Not done yet' message"):
            _hook(lab, exercise, printed)
    _hook(LABS / "lab.ipynb", exercise, "Correct: 42\n")  # a master: nbval compares it
    _hook(lab, _code("odt.lab.check_x(1)\n", count=3), "Correct: 1\n")  # a stored cell
    _hook(lab, _code("print(1)\n", count=None), "1\n")  # no check


# -- 4. the generator on a hand-written notebook -----------------------------------------------

def test_the_generator_on_a_hand_written_notebook():
    intro = {"cell_type": "markdown", "id": "m0", "metadata": {"tags": ["intro"]},
             "source": ["# Lab\n", "Solve both exercises."]}
    normal = _code("print(1 + 1)\n", [_stream("2\n")], count=3)
    function = _code("def double(x):\n    # BEGIN SOLUTION\n    return 2 * x\n"
                     "    # END SOLUTION\n\nodt.lab.check_double(double)\n",
                     [_stream("Correct: doubles\n")], count=4)
    top = _code("# BEGIN SOLUTION\nn = 3\nanswer = n * 4\n# END SOLUTION\n"
                "verdict = odt.lab.check_answer(answer)",
                [_stream("Correct: 12\n")], count=5)
    split = _code("# BEGIN SOLUTION\nk = 2\n# END SOLUTION\n", [], count=6)
    check = _code("odt.lab.check_k(k)\n", [_stream("Correct: 2\n")], count=7)
    alone = _code("# BEGIN SOLUTION\nm = 2\n# END SOLUTION\n", [], count=8)
    notebook = {"cells": [intro, normal, function, top, split, check, alone, normal],
                "metadata": {"kernelspec": {"name": "python3"}, "extra": [1, "é"]},
                "nbformat": 4, "nbformat_minor": 5}
    before = json.dumps(notebook)
    out = student_notebook(notebook)
    assert json.dumps(notebook) == before  # the master is not touched
    assert out["metadata"] == notebook["metadata"] and out["nbformat_minor"] == 5
    assert out["cells"][0] == intro and out["cells"][1] == normal  # kept, output and all
    assert _text(out["cells"][2]) == ('def double(x):\n    # YOUR CODE HERE\n'
                                      '    raise NotImplementedError("your turn")\n\n'
                                      "odt.lab.check_double(double)\n")
    assert _text(out["cells"][3]) == ("# YOUR CODE HERE\nanswer = None\n"
                                      "verdict = odt.lab.check_answer(answer)")
    assert _text(out["cells"][4]) == "# YOUR CODE HERE\nk = None\n"
    assert _text(out["cells"][5]) == "odt.lab.check_k(k)\n"  # the check cell: output cleared
    assert out["cells"][7] == normal  # after a solution with no check: not a check cell
    for cell in out["cells"][2:7]:
        assert cell["outputs"] == [] and cell["execution_count"] is None
        assert cell["id"] == notebook["cells"][out["cells"].index(cell)]["id"]
    text = render(out)
    assert text == json.dumps(out, indent=1, ensure_ascii=False) + "\n" and "é" in text
    assert render(student_notebook(json.loads(before))) == text  # same input, same bytes


def test_stubs_run_as_the_student_sees_them():
    """The stubbed cells run: the function raises NotImplementedError when called, the
    top-level answer is None; the lines after the solution still run."""
    seen = []
    namespace = {"check": seen.append}
    exec(student.stub("def f(x):\n    # BEGIN SOLUTION\n    return x\n    # END SOLUTION\n"
                      "check(f)\n"), namespace)  # noqa: S102
    with pytest.raises(NotImplementedError, match="your turn"):
        seen[0](1)
    loop = "for i in range(2):\n    # BEGIN SOLUTION\n    y = i\n    # END SOLUTION\n    check(y)\n"
    exec(student.stub(loop), namespace)  # noqa: S102 - inside a loop, not a def: y = None
    assert seen[1:] == [None, None]


def test_a_solution_marker_out_of_place_is_refused():
    with pytest.raises(ValueError, match="no '# END SOLUTION' line at the same indent"):
        student.stub("def f():\n    # BEGIN SOLUTION\n    return 1\n# END SOLUTION\n")
    with pytest.raises(ValueError, match="must stand alone"):
        student.stub("x = 1  # BEGIN SOLUTION\n# END SOLUTION\n")
