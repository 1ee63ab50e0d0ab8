"""The budget-explorer app: the shipped notebook runs headless and its explorer reacts, and
`odtkit app` serves it with Voila on 127.0.0.1 only, guarded by a token, until stopped."""

from __future__ import annotations

import fnmatch
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import nbformat
import pytest
from _net import free_port

from odtkit import app

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]


def test_the_notebook_is_package_data_with_a_title_and_instructions():
    path = app.notebook_path()
    assert path.is_file() and path.parent == Path(app.__file__).parent
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())[
        "tool"]["setuptools"]["package-data"]["odtkit"]
    relative = path.relative_to(ROOT / "odtkit").as_posix()
    assert any(fnmatch.fnmatch(relative, pattern) for pattern in package_data), package_data
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    title, *rest = [c for c in nb.cells if c.cell_type == "markdown"]
    lines = title.source.splitlines()
    assert lines[0].startswith("# ") and "slider" in title.source and not rest
    assert sum(1 for line in lines[1:] if line.strip()) == 1  # one paragraph of instructions
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")
    assert nb.metadata.kernelspec.name == "python3"


def test_the_page_reads_the_table_contributions_caches():
    from odtkit.datasets import data_dir

    assert app.table_path() == data_dir() / "sparse" / f"contributions-{app.MODEL}-{app.TASK}.json"
    assert app.table_path().is_file()  # shipped in data/sparse/ of the checkout


REACT = """
import json
import odtkit as odt
slider = explorer.controls["budget"]
before = [explorer.summary.value, explorer.verdict.value]
slider.value = slider.min
s = explorer.settings
ref = odt.sparse.search(explorer.model, table=explorer.table, budget_bytes=int(slider.min),
                        engine=s["engine"], optimizer=s["optimizer"], batch_size=s["batch_size"])
print(json.dumps({"before": before, "after": [explorer.summary.value, explorer.verdict.value],
                  "budget": slider.min, "peak": ref.report.peak_bytes,
                  "trainable": ref.plan.trainable_numel,
                  "fits": odt.device("stm32f746").fit(ref.report).fits,
                  "shown": odt.format_bytes(ref.report.peak_bytes)}))
"""


@pytest.mark.slow  # starts a kernel (nbclient, or Voila's)
def test_the_notebook_runs_headless_and_its_explorer_reacts(tmp_path):
    """Run the shipped notebook with nbclient (as Voila does), then move the budget to the
    slider's minimum: the shown numbers follow odt.sparse.search at that budget."""
    from nbclient import NotebookClient

    nb = nbformat.read(app.notebook_path(), as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(REACT))
    NotebookClient(nb, timeout=180, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    shown = [o for c in nb.cells[:-1] if c.cell_type == "code" for o in c.outputs]
    assert [o.output_type for o in shown] == ["execute_result"]  # no error, no warning
    assert "application/vnd.jupyter.widget-view+json" in shown[0].data
    (out,) = [o for o in nb.cells[-1].outputs if o.output_type == "stream"]
    got = json.loads(out.text)
    assert got["after"] != got["before"]
    assert got["peak"] <= got["budget"]
    assert f"<b>{got['shown']}</b>" in got["after"][0]
    assert f"{got['trainable']:,} of" in got["after"][0]
    assert ("does not fit" in got["after"][1]) == (not got["fits"])


def test_voila_reads_the_command_as_localhost_only_with_code_hidden():
    """Voila's own option parser reads the command line: 127.0.0.1, the port, no port
    retries, sources stripped, no browser, the token."""
    pytest.importorskip("voila")
    from voila.app import Voila

    command = app.voila_command(9123, token="secret")
    assert command[:3] == [sys.executable, "-m", "voila"]
    assert command[3] == str(app.notebook_path())
    voila = Voila()
    voila.parse_command_line(command[4:])
    config = voila.config
    assert (config.Voila.ip, config.Voila.port, config.Voila.port_retries) == (
        "127.0.0.1", 9123, 0)
    assert config.Voila.open_browser is False and config.Voila.token == "secret"
    assert config.VoilaConfiguration.strip_sources is True
    assert app.app_url(9123, "secret") == "http://127.0.0.1:9123/?token=secret"


def _non_loopback_address() -> str | None:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))  # no packet is sent: it only picks an interface
            address = s.getsockname()[0]
    except OSError:
        return None
    return None if address.startswith("127.") else address


def _first_line(stream, timeout_s: float) -> str:
    line: list[str] = []
    reader = threading.Thread(target=lambda: line.append(stream.readline()), daemon=True)
    reader.start()
    reader.join(timeout_s)
    return line[0] if line else ""


@pytest.mark.slow  # starts a kernel (nbclient, or Voila's)
def test_odtkit_app_serves_on_localhost_and_stops_on_ctrl_c(tmp_path):
    pytest.importorskip("voila")
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "JUPYTER_RUNTIME_DIR": str(tmp_path)}
    log = (tmp_path / "voila.log").open("w")
    server = subprocess.Popen([sys.executable, "-m", "odtkit.cli", "app", "--port", str(port),
                               "--no-browser"], cwd=tmp_path, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=log)
    try:
        line = _first_line(server.stdout, 60)
        assert line.startswith(f"odtkit app: the budget explorer at http://127.0.0.1:{port}/"
                               "?token="), line
        url = line.split(" at ", 1)[1].strip()
        assert app.wait_until_listening(port, 60, server), (tmp_path / "voila.log").read_text()
        # without the token the page (and its kernel) is closed: Jupyter's login page
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as reply:
            assert reply.status == 200 and reply.url.startswith(
                f"http://127.0.0.1:{port}/login")
        with urllib.request.urlopen(url.replace("/?", "/voila/static/voila.js?"),
                                    timeout=10) as reply:
            assert reply.status == 200
        other = _non_loopback_address()
        if other is not None:  # nobody else on the network reaches it
            with pytest.raises(OSError), socket.create_connection((other, port), timeout=2):
                pass
        server.send_signal(signal.SIGINT)  # what Ctrl-C sends
        assert server.wait(timeout=30) == 0
        with pytest.raises(ConnectionRefusedError):  # Voila stopped with it
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
        assert app.check_port(port) == port  # and the port is free for the next start
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
        log.close()
