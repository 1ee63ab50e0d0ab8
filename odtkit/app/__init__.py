"""The budget explorer of lab 03 as a standalone page: Voila serves the shipped notebook
(``budget_explorer.ipynb``, code hidden) on 127.0.0.1 only.

    odtkit app [--port 8866] [--no-browser]     # from a shell; Ctrl-C stops it
    server, url = odtkit.app.serve(port=8866)    # the same from Python (a subprocess.Popen)
    odtkit.app.stop(server)
    odtkit.app.budget_app()                      # what the page shows: the explorer itself

The page needs Voila (the ``app`` extra: ``pip install "odtkit[app]"``, or ``make app``)
and the contribution table that a source checkout ships in ``data/sparse/``, so that it
starts without training anything.
"""

from __future__ import annotations

import importlib.util
import os
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["HOST", "DEFAULT_PORT", "MODEL", "TASK", "notebook_path", "table_path", "check_ready",
           "check_port", "wait_until_listening", "voila_command", "app_url", "serve",
           "stop", "budget_app"]

HOST = "127.0.0.1"  # never another interface: the page runs a kernel
DEFAULT_PORT = 8866  # Voila's own default
MODEL, TASK = "mcunet-tiny", "digits-shift"  # the setting of lab 03 and its shipped table
INSTALL_HINT = 'pip install "odtkit[app]" (or `make app` in the odtkit clone)'


def notebook_path() -> Path:
    """The app's notebook, shipped inside the package."""
    return Path(__file__).resolve().parent / "budget_explorer.ipynb"


def table_path() -> Path:
    """Where ``odt.sparse.contributions`` keeps the table the page reads (lab 03's):
    ``<data dir>/sparse/contributions-<model>-<task>.json``."""
    from ..sparse import cached_path

    return cached_path(MODEL, TASK)


def check_ready() -> None:
    """Refuse, naming the fix, when Voila is not installed or the contribution table the
    page reads is missing (the page would otherwise train for minutes before it shows)."""
    if importlib.util.find_spec("voila") is None:
        raise ModuleNotFoundError(f"Voila is not installed in this environment; "
                                  f"{INSTALL_HINT}")
    _check_table()


def _check_table() -> None:
    table = table_path()
    if not table.is_file():
        raise FileNotFoundError(
            f"the contribution table of {MODEL} on {TASK} is not at {table}; run `odtkit app` "
            "from a clone of odtkit (data/sparse/ holds it), point ODTKIT_DATA_DIR at a folder "
            "whose sparse/ holds it, or rebuild it with data/build_contributions.py")


def check_port(port: object, name: str = "port") -> int:
    """``port`` as an int in 1..65535 that is free on 127.0.0.1 (ValueError otherwise,
    naming the argument ``name``)."""
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ValueError(f"{name} must be a whole number in 1..65535, got {port!r}; "
                         f"e.g. {name}={DEFAULT_PORT}")
    with socket.socket() as probe:
        # as the server binds: a port whose old connections linger (TIME_WAIT) is free
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((HOST, port))
        except OSError:
            raise ValueError(f"{name} {port} is already in use on {HOST}; choose a free "
                             f"one, e.g. {name}={port + 1}") from None
    return port


def wait_until_listening(port: int, timeout_s: float = 60.0,
                         server: subprocess.Popen | None = None) -> bool:
    """True once something accepts connections on 127.0.0.1:``port``; False after
    ``timeout_s`` or when ``server`` exits first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server is not None and server.poll() is not None:
            return False
        try:
            with socket.create_connection((HOST, port), timeout=1):
                return True
        except OSError:
            time.sleep(0.2)
    return False


def voila_command(port: int = DEFAULT_PORT, *, token: str = "") -> list[str]:
    """The Voila command line that serves the app on 127.0.0.1:``port`` (no other port
    tried), code hidden, no browser opened (``serve`` opens the URL with its token);
    ``token`` guards the page and its kernel when not empty."""
    command = [sys.executable, "-m", "voila", str(notebook_path()), f"--Voila.ip={HOST}",
               f"--port={port}", "--Voila.port_retries=0", "--strip_sources=True",
               "--no-browser"]
    if token:
        command.append(f"--token={token}")
    return command


def app_url(port: int, token: str = "") -> str:
    """Where the app is served."""
    return f"http://{HOST}:{port}/" + (f"?token={token}" if token else "")


def serve(port: int = DEFAULT_PORT, *, token: str | None = None,
          env: dict[str, str] | None = None, **popen: Any) -> tuple[subprocess.Popen, str]:
    """Start Voila on the app (checked first: Voila, the table, the port) and return the
    running server and its URL. ``token`` None draws a random one; "" serves without.
    The caller stops the server (``stop``)."""
    check_ready()
    check_port(port)
    token = secrets.token_urlsafe(16) if token is None else token
    server = subprocess.Popen(voila_command(port, token=token),
                              env=dict(os.environ if env is None else env), **popen)
    return server, app_url(port, token)


def stop(server: subprocess.Popen, timeout_s: float = 15.0) -> int:
    """Stop a server from ``serve``: SIGTERM (Voila shuts its kernels down), then kill."""
    if server.poll() is None:
        server.terminate()
        try:
            server.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    return server.returncode


def budget_app(device: str = "stm32f746") -> Any:
    """The page's content: ``odt.widgets.budget_explorer`` on lab 03's setting (pretrained
    mcunet-tiny, digits-shift) with the shipped contribution table."""
    _check_table()
    from ..datasets import load
    from ..models import create
    from ..sparse import contributions
    from ..widgets import budget_explorer

    task = load(TASK)
    table = contributions(create(MODEL, pretrained=True), task)
    return budget_explorer(MODEL, task, device=device, table=table)
