"""The student edition of the lab book: each master notebook (`labs/NN_*.ipynb`) with its
solutions replaced by a marked stub and the outputs of its exercise cells cleared, everything
else kept as it is. `labs/student/` is generated, never edited by hand:

    python -m odtkit.lab.student           (re)write labs/student/ from the masters
    python -m odtkit.lab.student --check   exit 1 naming each stale, missing or extra notebook

A solution sits between `# BEGIN SOLUTION` and `# END SOLUTION` lines. Inside a function it
becomes `raise NotImplementedError("your turn")`; elsewhere each name the rest of the cell reads
(the check's argument) becomes `name = None`. A check prints "Not done yet" on either.
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import sys
import textwrap
from pathlib import Path

BEGIN = "# BEGIN SOLUTION"
END = "# END SOLUTION"
MARK = "# YOUR CODE HERE"
CHECK_CALL = "odt.lab.check_"
STUDENT_DIR = "student"
MASTER_GLOB = "[0-9][0-9]_*.ipynb"
FIX = "python -m odtkit.lab.student"


def _lines_between(source: str) -> tuple[int, int, int, str]:
    """(start of the BEGIN line, start of the block, end of the END line, indent) of the first
    solution in `source`."""
    begin = source.index(BEGIN)
    start = source.rfind("\n", 0, begin) + 1
    indent = source[start:begin]
    if indent.strip() or source[begin + len(BEGIN):].split("\n", 1)[0].strip():
        raise ValueError(f"{BEGIN!r} must stand alone on its line, found "
                         f"{source[start:].splitlines()[0]!r}")
    end_line = re.compile(rf"^{re.escape(indent)}{re.escape(END)}[ \t]*(\n|$)", re.M)
    found = end_line.search(source, begin)
    if found is None:
        raise ValueError(f"{BEGIN!r} at indent {len(indent)} has no {END!r} line at the same "
                         "indent after it; close the solution with one")
    block_start = source.index("\n", begin) + 1
    return start, block_start, found.start(), indent


def _in_function(source: str, start: int, indent: str) -> bool:
    """Whether the line starting at `start` (indented by `indent`) sits inside a `def`."""
    width = len(indent.expandtabs())
    for line in reversed(source[:start].splitlines()):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        line_width = len(line.expandtabs()) - len(line.expandtabs().lstrip())
        if line_width < width:
            if re.match(r"(async\s+)?def\s", text):
                return True
            width = line_width
            if width == 0:
                return False
    return False


def _assigned(block: str) -> list[str]:
    """Names the block's own statements bind, in order (assignments, defs, imports)."""
    names: list[str] = []
    for node in ast.parse(textwrap.dedent(block)).body:
        targets: list[ast.AST] = []
        if isinstance(node, ast.Assign):
            targets = list(node.targets)
        elif isinstance(node, (ast.AnnAssign, ast.AugAssign)):
            targets = [node.target]
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.append(node.name)
        for target in targets:
            names += [n.id for n in ast.walk(target) if isinstance(n, ast.Name)]
    return list(dict.fromkeys(names))


def _read(code: str) -> set[str] | None:
    """Names `code` reads, or None when it is not plain Python (a magic, say)."""
    try:
        tree = ast.parse(textwrap.dedent(code))
    except SyntaxError:
        return None
    return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}


def _stub_body(source: str, start: int, block: str, rest: str, indent: str) -> str:
    if _in_function(source, start, indent):
        return f'{indent}{MARK}\n{indent}raise NotImplementedError("your turn")\n'
    names = _assigned(block)
    read = _read(rest)
    if read is not None and read & set(names):
        names = [name for name in names if name in read]
    lines = [f"{name} = None" for name in names] or (["pass"] if indent else [])
    return "".join(f"{indent}{line}\n" for line in [MARK, *lines])


def stub(source: str) -> str:
    """The student's version of a code cell: each solution between `# BEGIN SOLUTION` and
    `# END SOLUTION` becomes `# YOUR CODE HERE` and a stub; the lines around it stay."""
    while BEGIN in source:
        start, block_start, end, indent = _lines_between(source)
        after = source.find("\n", end)
        after = len(source) if after < 0 else after + 1
        block, rest = source[block_start:end], source[after:]
        try:
            body = _stub_body(source, start, block, rest, indent)
        except SyntaxError as error:
            raise ValueError(f"the solution does not parse ({error.msg}, line {error.lineno} "
                             f"of the solution):\n{block}") from None
        source = source[:start] + body + rest
    return source


def _source(cell: dict) -> str:
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def _split(source: str) -> list[str]:
    return source.splitlines(keepends=True)


def student_notebook(notebook: dict, name: str = "notebook") -> dict:
    """A copy of a master notebook (as JSON data) with every solution stubbed and the outputs
    and execution counts of its exercise cells cleared (a solution cell, and the next code cell
    when the check is there); every other cell and the notebook's metadata untouched."""
    cells = [dict(cell) for cell in notebook["cells"]]
    clear_next = False
    for index, cell in enumerate(cells):
        if cell["cell_type"] != "code":
            continue
        source = _source(cell)
        if BEGIN in source:
            try:
                new = stub(source)
            except ValueError as error:
                raise ValueError(f"{name}, cell {index} (id {cell.get('id', '?')}): "
                                 f"{error}") from None
            cell["source"] = _split(new) if isinstance(cell["source"], list) else new
            clear_next = CHECK_CALL not in new
        elif clear_next and CHECK_CALL in source:
            clear_next = False
        else:
            clear_next = False
            continue
        cell["outputs"], cell["execution_count"] = [], None
    return {**notebook, "cells": cells}


def render(notebook: dict) -> str:
    """The notebook as the masters are stored: JSON, indent 1, UTF-8 kept, trailing newline."""
    return json.dumps(notebook, indent=1, ensure_ascii=False) + "\n"


def masters(labs: Path) -> list[Path]:
    """The master notebooks in `labs`, in order."""
    return sorted(Path(labs).glob(MASTER_GLOB))


def edition(labs: Path) -> dict[str, str]:
    """{file name: text} of the student edition the masters in `labs` give."""
    labs = Path(labs)
    if not labs.is_dir():
        raise FileNotFoundError(f"no lab folder at {labs}; run from the repository root or "
                                "pass --labs PATH (the folder holding the NN_*.ipynb masters)")
    return {path.name: render(student_notebook(json.loads(path.read_text(encoding="utf-8")),
                                               path.name))
            for path in masters(labs)}


def stale(labs: Path, student: Path | None = None) -> list[str]:
    """One line per student notebook that differs from what the masters give, is missing, or
    has no master; empty when the edition is up to date."""
    labs = Path(labs)
    student = labs / STUDENT_DIR if student is None else Path(student)
    wanted = edition(labs)
    on_disk = {path.name: path for path in student.glob("*.ipynb")}
    problems = []
    for name, text in wanted.items():
        if name not in on_disk:
            problems.append(f"missing: {student / name} (master {labs / name})")
        elif on_disk[name].read_text(encoding="utf-8") != text:
            problems.append(f"stale: {student / name} differs from what its master "
                            f"{labs / name} gives")
    problems += [f"extra: {student / name} has no master {labs / name}"
                 for name in sorted(set(on_disk) - set(wanted))]
    return problems


def write(labs: Path, student: Path | None = None) -> list[Path]:
    """(Re)write the student edition from the masters in `labs`: changed and missing
    notebooks written, those without a master removed. Returns the paths touched."""
    labs = Path(labs)
    student = labs / STUDENT_DIR if student is None else Path(student)
    wanted = edition(labs)
    student.mkdir(parents=True, exist_ok=True)
    touched = []
    for name, text in wanted.items():
        path = student / name
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
            touched.append(path)
    for path in sorted(student.glob("*.ipynb")):
        if path.name not in wanted:
            path.unlink()
            touched.append(path)
    return touched


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m odtkit.lab.student",
                                     description="Generate (or check) the student edition of "
                                                 "the lab book from the master notebooks.")
    parser.add_argument("--labs", type=Path, default=Path("labs"),
                        help="the folder holding the NN_*.ipynb masters (default: labs)")
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 if the edition is not up to date")
    args = parser.parse_args(argv)
    try:
        if args.check:
            problems = stale(args.labs)
            for line in problems:
                print(line, file=sys.stderr)
            if problems:
                print(f"the student edition is out of date; regenerate it with `{FIX}` "
                      "(or `make student`) and commit labs/student/", file=sys.stderr)
                return 1
            print(f"the student edition is up to date ({len(masters(args.labs))} notebooks)")
            return 0
        touched = write(args.labs)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for path in touched:
        print(f"{'wrote' if path.exists() else 'removed'} {path}")
    print(f"the student edition is up to date ({len(masters(args.labs))} notebooks)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
