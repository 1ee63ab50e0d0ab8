"""Real-browser tests: Playwright drives the system's chromium (headless) through what a
student does: JupyterLab on lab 01, Run All, drag the memory explorer's slider; and the
budget-explorer page of `odtkit app`, drag its budget. Each time the shown numbers must change.

Without Playwright or a chromium binary the tests skip, saying what to install; where the
environment variable CI is set (`.ci/run` sets it) they fail instead, so CI cannot pass
without running them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from _net import free_port

from odtkit import app

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
LAB = "01_memory_anatomy.ipynb"
SLOW_MS = 300_000  # a kernel's imports and a notebook's cells on two busy cores
# the shown numbers of an explorer: its HTML panes (summary, verdict), not the slider readout
SHOWN = "(el) => Array.from(el.querySelectorAll('.widget-html')).map(e => e.innerText).join('|')"


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _missing(reason: str) -> None:
    if _in_ci():
        pytest.fail(f"{reason} (CI is set, so the browser tests must run)")
    pytest.skip(reason)


def chromium_path() -> str | None:
    """The browser to drive: $ODTKIT_CHROMIUM, else chromium or chromium-browser on PATH."""
    given = os.environ.get("ODTKIT_CHROMIUM")
    if given:
        return given if Path(given).is_file() else None
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing('Playwright is not installed: pip install -e ".[browser]" (make setup does)')
    executable = chromium_path()
    if not executable:
        given = os.environ.get("ODTKIT_CHROMIUM")
        where = (f"ODTKIT_CHROMIUM={given!r} is not a file" if given
                 else "neither chromium nor chromium-browser is on PATH")
        _missing(f"no chromium binary ({where}): apt-get install chromium (.ci/run does), "
                 "or set ODTKIT_CHROMIUM to the browser's path")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=executable, headless=True,
                                              args=["--no-sandbox", "--disable-dev-shm-usage"])
        yield chromium
        chromium.close()


@contextmanager
def _page(browser, tmp_path: Path, log: Path):
    """A fresh page; on failure a screenshot (tmp_path/failure.png) and the server log's
    tail go with the error."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    try:
        yield page
    except BaseException as err:
        shot = tmp_path / "failure.png"
        try:
            page.screenshot(path=str(shot), full_page=True)
        except Exception:  # noqa: BLE001 - the original error matters more
            pass
        tail = log.read_text(errors="replace")[-3000:] if log.is_file() else ""
        raise AssertionError(f"{err}\nscreenshot: {shot}\nserver log:\n{tail}") from err
    finally:
        page.close()


def _stop(server: subprocess.Popen) -> None:
    if server.poll() is None:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def _drag_first_slider(page, scope) -> None:
    """Drag the first ipywidgets slider in ``scope`` far along its track with the mouse
    (towards whichever end is farther from the handle)."""
    track = scope.locator(".widget-slider .noUi-target").first.bounding_box()
    handle = scope.locator(".widget-slider .noUi-handle").first.bounding_box()
    x, y = handle["x"] + handle["width"] / 2, handle["y"] + handle["height"] / 2
    share = 0.1 if x > track["x"] + track["width"] / 2 else 0.9
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(track["x"] + share * track["width"], y, steps=8)
    page.mouse.up()


def _numbers_change_on_drag(page, scope) -> tuple[str, str]:
    """Drag the scope's first slider; wait until the explorer's shown text changes."""
    element = scope.element_handle()
    before = element.evaluate(SHOWN)
    assert re.search(r"\d", before), f"the explorer shows no numbers: {before!r}"
    _drag_first_slider(page, scope)
    page.wait_for_function(f"([el, before]) => ({SHOWN})(el) !== before",
                           arg=[element, before], timeout=60_000)
    return before, element.evaluate(SHOWN)


# ---------------------------------------------------------------- JupyterLab, lab 01


def _lab_args() -> list[str]:
    """The server options `make lab` passes (read from the Makefile, as test_lab_server
    does), the lab book's root replaced by a copy."""
    dry = subprocess.run(["make", "-s", "-n", "lab"], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout
    line = re.search(r"jupyter lab(.*)$", dry, flags=re.M)
    assert line, f"`make lab` does not run jupyter lab:\n{dry}"
    return line.group(1).split()


def _all_prompts_numbered(page, cells: int) -> bool:
    prompts = page.evaluate("() => Array.from(document.querySelectorAll("
                            "'.jp-Notebook .jp-CodeCell .jp-InputPrompt')).map(e => e.textContent)")
    return len(prompts) == cells and all(re.fullmatch(r"\s*\[\d+\]:\s*", p) for p in prompts)


def test_lab01_run_all_then_the_memory_explorer_follows_its_slider(browser, tmp_path):
    labs = tmp_path / "labs"  # a copy: the committed notebook is never touched
    labs.mkdir()
    notebook = json.loads((ROOT / "labs" / LAB).read_text())
    code = [c for c in notebook["cells"] if c["cell_type"] == "code"]
    for cell in code:  # as a student opens it: no stored prompt numbers say a cell has run
        cell["execution_count"], cell["outputs"] = None, []
    (labs / LAB).write_text(json.dumps(notebook, indent=1, ensure_ascii=False) + "\n")
    cells = len(code)
    args = [a for a in _lab_args() if not a.startswith("--ServerApp.root_dir=")]
    port, token = free_port(), "odtkit-browser-test"
    log = tmp_path / "lab.log"
    env = {**os.environ, "ODTKIT_SMOKE": "1", "OMP_NUM_THREADS": "1",
           "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
           "JUPYTER_CONFIG_DIR": str(tmp_path / "config")}
    with log.open("w") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "jupyterlab", *args, f"--ServerApp.root_dir={labs}",
             "--no-browser", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
             f"--IdentityProvider.token={token}", "--ServerApp.terminals_enabled=False",
             "--ServerApp.shutdown_no_activity_timeout=600"],
            cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        assert app.wait_until_listening(port, 120, server), log.read_text()[-3000:]
        with _page(browser, tmp_path, log) as page:
            page.set_default_timeout(60_000)
            page.goto(f"http://127.0.0.1:{port}/lab/tree/{LAB}?token={token}",
                      timeout=SLOW_MS)
            page.wait_for_selector(".jp-Notebook .jp-CodeCell", timeout=SLOW_MS)
            # a kernel is up once the server says idle and the page's own connection does
            # (the toolbar's indicator): before that, Run All's requests can be lost
            page.wait_for_function(_kernel_idle_js(token), timeout=SLOW_MS, polling=500)
            page.wait_for_selector('.jp-Notebook-ExecutionIndicator[data-status="idle"]',
                                   state="attached", timeout=SLOW_MS)
            _run_all(page)
            deadline = time.monotonic() + SLOW_MS / 1000
            while not _all_prompts_numbered(page, cells):
                assert time.monotonic() < deadline, "Run All did not finish in time"
                errors = page.locator(".jp-OutputArea-output[data-mime-type="
                                      "'application/vnd.jupyter.stderr'] >> text=Traceback")
                assert errors.count() == 0, errors.first.inner_text()
                page.wait_for_timeout(500)
            explorer = page.locator(".jp-OutputArea-output:has(.widget-slider)").first
            explorer.scroll_into_view_if_needed()
            before, after = _numbers_change_on_drag(page, explorer)
        assert before != after and re.search(r"\d", after)
    finally:
        _stop(server)


def _cells_started(page) -> bool:
    return page.evaluate("() => Array.from(document.querySelectorAll("
                         "'.jp-Notebook .jp-CodeCell .jp-InputPrompt'))"
                         ".some(e => /\\[(\\*|\\d+)\\]/.test(e.textContent))")


def _run_all(page, tries: int = 3) -> None:
    """Run > Run All Cells; again if no cell has started 20 s later (a click that reached a
    kernel connection still settling is lost), at most ``tries`` times."""
    for _ in range(tries):
        page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
        page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
        for _ in range(40):
            if _cells_started(page):
                return
            page.wait_for_timeout(500)
    raise AssertionError(f"Run All started no cell in {tries} tries")


def _kernel_idle_js(token: str) -> str:
    """A page function: true once the notebook's kernel reports idle to the server."""
    return ("async () => { const r = await fetch('/api/kernels?token=" + token + "');"
            " const k = await r.json(); return k.length > 0 && "
            "k.every(x => x.execution_state === 'idle'); }")


# ---------------------------------------------------------------- odtkit app (Voila)


def test_the_app_page_follows_its_budget_slider(browser, tmp_path):
    """The page `odtkit app` serves (the same command, on a free port), opened at the URL it
    prints: the explorer renders as real controls without code, and dragging the budget
    changes the shown plan."""
    port = free_port()
    log = tmp_path / "voila.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "JUPYTER_RUNTIME_DIR": str(tmp_path)}
    with log.open("w") as err:
        server = subprocess.Popen(
            [sys.executable, "-m", "odtkit.cli", "app", "--port", str(port), "--no-browser"],
            cwd=tmp_path, env=env, text=True, stdout=subprocess.PIPE, stderr=err)
    try:
        line = server.stdout.readline()
        assert " at http://127.0.0.1:" in line, log.read_text()
        url = line.split(" at ", 1)[1].strip()
        assert app.wait_until_listening(port, 120, server), log.read_text()[-3000:]
        with _page(browser, tmp_path, log) as page:
            page.set_default_timeout(60_000)
            page.goto(url, timeout=SLOW_MS)
            page.wait_for_selector(".widget-slider .noUi-handle", timeout=SLOW_MS)
            page.wait_for_function(f"() => /\\d/.test(({SHOWN})(document.body))",
                                   timeout=SLOW_MS)
            assert page.locator("h1").first.inner_text().strip()
            assert "budget_app" not in page.content()  # the code stays hidden
            before, after = _numbers_change_on_drag(page, page.locator("body"))
        assert before != after and re.search(r"\d", after)
    finally:
        _stop(server)
