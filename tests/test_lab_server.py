"""`make lab` serves labs/ in JupyterLab: start the same server on 127.0.0.1 and ask it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from _net import free_port

ROOT = Path(__file__).resolve().parents[1]


def _lab_args() -> list[str]:
    """The server options the Makefile's `lab` target passes, so the test checks that command."""
    dry = subprocess.run(["make", "-s", "-n", "lab"], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout
    line = re.search(r"jupyter lab(.*)$", dry, flags=re.M)
    assert line, f"`make lab` does not run jupyter lab:\n{dry}"
    return line.group(1).split()


def test_lab_command_serves_the_lab_book(tmp_path):
    port, token = free_port(), "odtkit-test"
    cmd = [sys.executable, "-m", "jupyterlab", *_lab_args(), "--no-browser",
           "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
           f"--IdentityProvider.token={token}", "--ServerApp.shutdown_no_activity_timeout=60",
           "--ServerApp.terminals_enabled=False"]
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path), "JUPYTER_CONFIG_DIR": str(tmp_path)}
    server = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE)
    try:
        deadline, listing = time.monotonic() + 60, None
        while time.monotonic() < deadline and listing is None:
            if server.poll() is not None:
                raise AssertionError(server.stderr.read().decode()[-2000:])
            try:
                url = f"http://127.0.0.1:{port}/api/contents?token={token}"
                with urllib.request.urlopen(url, timeout=2) as reply:
                    listing = json.load(reply)
            except OSError:
                time.sleep(0.3)
        assert listing is not None, "JupyterLab did not answer within 60 s"
        served = {item["name"] for item in listing["content"]}
        on_disk = {p.name for p in (ROOT / "labs").glob("*.ipynb")}
        assert on_disk and on_disk <= served
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/lab?token={token}", timeout=5) as r:
            assert r.status == 200 and b"JupyterLab" in r.read()
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
