"""The set-up a new user relies on: README commands, Makefile, CI entry, dependency lists."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest
import torch

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
    assert "-e .[dev,app,browser,native]" in pip_lines  # the package, with the extras make setup takes
    project = _pyproject()["project"]
    extras = project["optional-dependencies"]
    wanted = [r for r in project["dependencies"] + extras["dev"] + extras["app"] + extras["browser"]
              + extras["native"] if "python_version <" not in r]  # back-ports are pip's business
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
    assert recipe.index("$(TORCH)") < recipe.index('-e ".[dev,app,browser,native]"')
    # then odtkit's compiled ops are built (a failure there is not fatal)
    assert recipe.index('-e ".[dev,app,browser,native]"') < recipe.index("-$(BIN)/odtkit native")


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
    assert namespace["hist8"].precision == "int8" and namespace["hist8"].qas is True


# ---------------------------------------------------------------- the wheel

INSTALLED_CHECK = r"""
import io, json, os, sys
from contextlib import redirect_stdout
from pathlib import Path

import odtkit as odt
from odtkit import cli, models
from odtkit.datasets import data_dir

model = models.create("mcunet-tiny", pretrained=True)
digits = odt.datasets.load("digits")
try:
    odt.datasets.load("mnist")
    missing = ""
except FileNotFoundError as err:
    missing = str(err)
out = io.StringIO()
with redirect_stdout(out):
    code = cli.main(["devices"])
print(json.dumps({
    "odtkit": odt.__file__, "pretrained": str(models.pretrained_path("mcunet-tiny")),
    "sums": {k: float(v.double().sum()) for k, v in model.state_dict().items()},
    "config": model.config["name"],
    "digits": [len(digits.x_train), len(digits.x_test), float(digits.x_train.double().sum())],
    "data_dir": str(data_dir()), "missing": missing, "cli_code": code, "cli": out.getvalue(),
}))
"""


@pytest.fixture(scope="module")
def installed_wheel(tmp_path_factory):
    """Build the wheel from a copy of the sources (no stale build/ folder can leak into it),
    offline, and install it into a folder of its own: what a user's `pip install` gets."""
    import shutil
    import subprocess

    base = tmp_path_factory.mktemp("wheel")
    src = base / "src"
    shutil.copytree(ROOT / "odtkit", src / "odtkit",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    built = subprocess.run([*pip, "wheel", ".", "--no-deps", "--no-build-isolation",
                            "--no-index", "-q", "-w", str(base / "dist")], cwd=src,
                           capture_output=True, text=True, timeout=120)
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = (base / "dist").glob("odtkit-*.whl")
    target = base / "site"
    done = subprocess.run([*pip, "install", "--no-deps", "--no-index", "-q", "--target",
                           str(target), str(wheel)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    home = base / "home"  # a user's home without any odtkit data
    home.mkdir()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("ODTKIT_") and k not in ("PYTHONPATH", "CI")}
    env.update(PYTHONPATH=str(target), HOME=str(home))
    return {"wheel": wheel, "target": target, "home": home, "env": env, "cwd": base}


@pytest.mark.packaging
def test_the_wheel_ships_the_package_data(installed_wheel):
    import zipfile

    names = set(zipfile.ZipFile(installed_wheel["wheel"]).namelist())
    for model in ("mcunet-tiny", "mbv2-tiny", "mlp"):
        assert f"odtkit/models/pretrained/{model}.pt" in names
    profiles = {p.name for p in (ROOT / "odtkit/hardware/profiles").glob("*.toml")}
    links = {p.name for p in (ROOT / "odtkit/hardware/profiles/links").glob("*.toml")}
    assert profiles and links
    assert {f"odtkit/hardware/profiles/{n}" for n in profiles} <= names
    assert {f"odtkit/hardware/profiles/links/{n}" for n in links} <= names
    assert "odtkit/datasets/data/digits.npz" in names
    assert not any(n.startswith(("tests/", "labs/", "data/")) for n in names)


@pytest.mark.packaging
def test_the_installed_wheel_runs_outside_the_repository(installed_wheel):
    """From a folder outside the checkout, with only the installed wheel on the path: the
    package, its pretrained weights and profiles come from the install, not the source."""
    import json
    import subprocess

    target, home = installed_wheel["target"], installed_wheel["home"]
    done = subprocess.run([sys.executable, "-c", INSTALLED_CHECK], cwd=installed_wheel["cwd"],
                          env=installed_wheel["env"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert Path(got["odtkit"]).is_relative_to(target), got["odtkit"]
    assert Path(got["pretrained"]).is_relative_to(target) and got["config"] == "mcunet-tiny"
    # the weights loaded are the shipped ones (not a fresh init), read here with torch alone
    shipped = torch.load(ROOT / "odtkit/models/pretrained/mcunet-tiny.pt", weights_only=True)
    want = {k: float(v.double().sum()) for k, v in shipped["state_dict"].items()}
    assert got["sums"] == pytest.approx(want, rel=1e-12, abs=1e-12)
    # the digits load from the installed package data, without scikit-learn installed there
    import odtkit as odt

    here = odt.datasets.load("digits")
    assert got["digits"] == [len(here.x_train), len(here.x_test),
                             float(here.x_train.double().sum())]
    # no checkout around the installed package: local data go under the user's home, and
    # the error for missing files says where to put them
    assert got["data_dir"] == str(home / ".odtkit" / "data")
    assert str(home / ".odtkit" / "data" / "mnist") in got["missing"]
    assert "ODTKIT_DATA_DIR" in got["missing"] and "root=" in got["missing"]
    assert got["cli_code"] == 0 and "stm32f746" in got["cli"] and "320 KiB" in got["cli"]


@pytest.mark.packaging
def test_the_console_script_prints_the_catalogue(installed_wheel):
    import subprocess

    script = installed_wheel["target"] / "bin" / "odtkit"
    done = subprocess.run([str(script), "devices"], cwd=installed_wheel["cwd"],
                          env=installed_wheel["env"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0].split()[:3] == ["name", "kind", "SRAM"]
    from odtkit import hardware

    assert [line.split()[0] for line in done.stdout.splitlines()[2:2 + len(hardware.devices())]
            ] == hardware.devices()
