"""The set-up a new user relies on: README commands, Makefile, CI entry, dependency lists."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[1]

# pip name -> conda-forge name, where they differ
CONDA_NAME = {"torch": "pytorch-cpu", "memory-profiler": "memory_profiler"}


def _bare(requirement: str) -> str:
    return re.split(r"[<>=!~;\[ ]", requirement.strip(), maxsplit=1)[0].lower()


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_runtime_and_dev_dependencies_are_the_issue_list():
    project = _pyproject()["project"]
    runtime = {_bare(r) for r in project["dependencies"]}
    for name in ("torch", "numpy", "matplotlib", "ipywidgets", "jupyterlab",
                 "memory-profiler", "tqdm"):
        assert name in runtime
    dev = {_bare(r) for r in project["optional-dependencies"]["dev"]}
    assert {"pytest", "nbval", "hypothesis", "ruff"} <= dev
    assert project["requires-python"] == ">=3.10"


def test_environment_yml_parses_and_names_the_same_dependencies():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert "conda-forge" in env["channels"]
    conda, pip, pip_lines = set(), set(), []
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            pip_lines += dep["pip"]
            pip |= {_bare(d) for d in dep["pip"]}
        else:
            conda.add(_bare(dep))
    assert "python" in conda
    assert "-e .[dev]" in pip_lines  # the package itself, with the same extras as make setup
    project = _pyproject()["project"]
    wanted = [r for r in project["dependencies"] + project["optional-dependencies"]["dev"]
              if "python_version <" not in r]  # back-ports are pip's business
    for requirement in wanted:
        name = _bare(requirement)
        assert CONDA_NAME.get(name, name) in conda | pip, f"{name} missing from environment.yml"


def test_readme_opens_with_the_two_commands_and_they_exist():
    readme = (ROOT / "README.md").read_text()
    head = readme[: readme.find("## ")] if "## " in readme else readme
    commands = re.findall(r"^\s*(make \w+)\s*$", head, flags=re.M)
    assert commands[:2] == ["make lab", "make test"], commands
    makefile = (ROOT / "Makefile").read_text()
    for target in ("lab", "test", "setup"):
        assert re.search(rf"^{target}:", makefile, flags=re.M)
    # torch's pinned CPU build goes in before the package
    recipe = makefile[makefile.index("$(STAMP):"):]
    assert recipe.index("$(TORCH)") < recipe.index('-e ".[dev]"')


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^make test\s*$", ci, flags=re.M)
    assert "set -e" in ci


def test_readme_library_example_runs():
    """The README's code block is what a new user pastes first: it must work as written."""
    block = re.search(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    namespace: dict = {}
    exec(compile(block.group(1).replace("epochs=3", "epochs=1"), "README.md", "exec"), namespace)
    assert namespace["est"].by_category == namespace["meas"].by_category
    assert namespace["hist"].epochs == 1
