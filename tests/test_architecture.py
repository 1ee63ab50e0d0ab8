"""The house rules, read from the source with ``ast``: no private names across subpackages,
no import cycles, no module over 400 lines, and the README's map matches the tree.

A name (module or attribute) that starts with ``_`` is private to the package that holds
it: ``odtkit.memory._trace`` may be imported inside ``odtkit.memory`` only, and
``odtkit._checks`` (private to ``odtkit`` itself) anywhere in the package.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "odtkit"
MAX_LINES = 400


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_package(path: Path) -> bool:
    return path.name == "__init__.py"


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _resolve(module: str, is_package: bool, level: int, target: str | None) -> str:
    """The absolute module a (possibly relative) ``from ... import`` names."""
    if level == 0:
        return target or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def imports_of(path: Path) -> list[tuple[int, str, str | None, bool]]:
    """(line, imported module, imported name or None, at module level) for every import
    of an odtkit module in ``path``."""
    module = _module_name(path)
    tree = ast.parse(path.read_text(), filename=str(path))
    top_level = {id(node) for node in tree.body}
    # imports inside `if TYPE_CHECKING:` or try/except at top level count as top level too
    for node in tree.body:
        if isinstance(node, (ast.If, ast.Try)):
            top_level.update(id(n) for n in ast.walk(node))
    found = []
    for node in ast.walk(tree):
        at_top = id(node) in top_level
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "odtkit":
                    found.append((node.lineno, alias.name, None, at_top))
        elif isinstance(node, ast.ImportFrom):
            source = _resolve(module, _is_package(path), node.level, node.module)
            if source.split(".")[0] != "odtkit":
                continue
            for alias in node.names:
                found.append((node.lineno, source, alias.name, at_top))
    return found


def _owner(dotted: str) -> str:
    """The package a private part belongs to: the dotted path up to its first ``_`` part,
    and for a private name inside a plain module, that module's package."""
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        if part.startswith("_") and not part.startswith("__"):
            owner = ".".join(parts[:i])
            if owner in MODULES and not _is_package(MODULES[owner]):
                owner = owner.rsplit(".", 1)[0]
            return owner
    return ""


def private_violations(module: str, imports) -> list[str]:
    bad = []
    for line, source, name, _ in imports:
        if name is not None and f"{source}.{name}" in MODULES:  # `from pkg import submodule`
            source, name = f"{source}.{name}", None
        dotted = source if name is None else f"{source}.{name}"
        owner = _owner(dotted)
        if owner and not (module == owner or module.startswith(owner + ".")):
            bad.append(f"{module}:{line} imports {dotted}, private to {owner}")
    return bad


def test_no_private_name_is_imported_from_another_subpackage():
    bad = []
    for module, path in MODULES.items():
        bad += private_violations(module, imports_of(path))
    assert not bad, "\n".join(bad)


def test_the_private_rule_catches_what_it_should():
    """The rule itself, on hand-made cases: a check that cannot fail proves nothing."""
    ok = [(1, "odtkit._checks", "lookup", True), (2, "odtkit.memory._trace", "Trace", True),
          (3, "odtkit.memory", "_trace", True)]
    assert private_violations("odtkit.memory.estimate", ok) == []
    assert private_violations("odtkit.training.checkpoint",
                              [(4, "odtkit.training.loop", "_probe", True)]) == []
    bad = [(5, "odtkit.memory._trace", "Trace", True), (6, "odtkit.memory", "_trace", True),
           (7, "odtkit.distributed.simulate", "_exchange", True),
           (8, "odtkit.training.loop", "_probe", True)]
    found = private_violations("odtkit.lab.checks", bad)
    assert len(found) == 4, found
    assert "private to odtkit.memory" in found[0] and "private to odtkit.training" in found[3]


def _graph() -> dict[str, set[str]]:
    """Import edges between odtkit modules, function-local (lazy) imports included: a cycle
    that only a lazy import closes is still two modules that cannot stand alone."""
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for module, path in MODULES.items():
        for _, source, name, _ in imports_of(path):
            target = f"{source}.{name}" if f"{source}.{name}" in MODULES else source
            if target in MODULES and target != module:
                graph[module].add(target)
                # importing a.b.c runs a/__init__ and a/b/__init__ first
                parts = target.split(".")
                for i in range(1, len(parts)):
                    parent = ".".join(parts[:i])
                    if parent in MODULES and parent != module and not module.startswith(parent + "."):
                        graph[module].add(parent)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_package_has_no_import_cycle():
    cycle = find_cycle(_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_is_over_400_lines(module):
    lines = len(MODULES[module].read_text().splitlines())
    assert lines <= MAX_LINES, f"{MODULES[module].relative_to(ROOT)} has {lines} lines"


def test_readme_architecture_matches_the_tree():
    """Every subpackage and top-level module is in the README's map, and nothing else is."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Architecture", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"^\| `(\w+)/?` \|", section, flags=re.MULTILINE))
    tree = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    tree |= {p.stem for p in PACKAGE.glob("*.py") if not p.stem.startswith("_")}
    assert listed == tree, (f"README lists {sorted(listed - tree)} that the tree lacks and "
                            f"lacks {sorted(tree - listed)}")
