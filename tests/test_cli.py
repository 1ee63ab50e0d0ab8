"""The odtkit command line: catalogue tables, one profile with sources, helpful errors."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _net import free_port

from odtkit import cli
from odtkit import hardware as hw

ROOT = Path(__file__).resolve().parents[1]


def run(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_devices_prints_an_aligned_table(capsys):
    code, out, err = run(capsys, "devices")
    assert code == 0 and err == ""
    lines = out.splitlines()
    header, rule, rows = lines[0], lines[1], lines[2:2 + len(hw.devices())]
    for column in ("name", "kind", "SRAM", "DRAM", "flash", "clock", "fp32 peak", "int8 peak"):
        assert column in header
    assert [r.split()[0] for r in rows] == hw.devices()
    f746 = next(r for r in rows if r.startswith("stm32f746 "))
    # right-aligned number columns end where their header ends
    assert f746.index("320 KiB") + len("320 KiB") == header.index("SRAM") + len("SRAM")
    assert f746.index("216 MHz") + len("216 MHz") == header.index("clock") + len("clock")
    assert "~432 MMAC/s" in f746  # derived peaks are marked
    # left-aligned kind column starts under its header on every row
    assert all(r[header.index("kind"):].startswith(hw.device(r.split()[0]).kind) for r in rows)
    assert len(re.split(r"\s{2,}", header.strip())) == len(rule.split()) == 9
    assert all(len(r) <= len(rule) for r in rows)
    assert "derived" in lines[-1]  # legend


def test_devices_filters_by_kind(capsys):
    code, out, _ = run(capsys, "devices", "--kind", "mcu")
    assert code == 0
    names = [line.split()[0] for line in out.splitlines()[2:-1]]
    assert names == hw.devices(kind="mcu")


def test_links_table(capsys):
    code, out, _ = run(capsys, "links")
    assert code == 0
    rows = out.splitlines()[2:2 + len(hw.links())]
    assert [r.split()[0] for r in rows] == hw.links()
    lora = next(r for r in rows if r.startswith("lorawan"))
    assert "5.47 kbit/s" in lora and "0.01" in lora


def test_device_prints_every_source(capsys):
    code, out, _ = run(capsys, "device", "Stm32 F746")
    assert code == 0
    dev = hw.device("stm32f746")
    assert out.startswith("stm32f746 (mcu)")
    assert "320 KiB" in out
    for key, quantity in dev.sources.items():
        assert key in out and quantity.source in out
    for key, reason in dev.unknown.items():
        assert key in out and reason in out


def test_link_prints_every_source(capsys):
    code, out, _ = run(capsys, "link", "LoRaWAN")
    assert code == 0
    for quantity in hw.link("lorawan").sources.values():
        assert quantity.source in out


@pytest.mark.parametrize(("command", "name", "suggestion"),
                         [("device", "stm32f74", "stm32f746"), ("link", "lorawn", "lorawan")])
def test_unknown_names_exit_2_with_a_suggestion(capsys, command, name, suggestion):
    code, out, err = run(capsys, command, name)
    assert code == 2 and out == ""
    assert f"Did you mean '{suggestion}'" in err


def test_bad_profile_file_exits_2_naming_it(capsys, tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text('name = "x"\nkind = "mcu"\n', encoding="utf-8")
    code, out, err = run(capsys, "device", str(path))
    assert code == 2 and "broken.toml" in err and "sram_bytes" in err


def test_usage_errors_exit_2(capsys):
    assert cli.main([]) == 2
    assert cli.main(["devices", "--kind", "gpu"]) == 2
    assert "usage" in capsys.readouterr().err
    assert cli.main(["--help"]) == 0


def test_format_table_alignment():
    text = cli.format_table(["name", "size"], [["a", "1 KiB"], ["long-name", "10 MiB"]])
    lines = text.splitlines()
    assert lines == ["name         size", "---------  ------", "a           1 KiB",
                     "long-name  10 MiB"]


def test_module_entry_point_runs_in_a_fresh_interpreter():
    done = subprocess.run([sys.executable, "-m", "odtkit.cli", "devices"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "stm32f746" in done.stdout and "320 KiB" in done.stdout
    done = subprocess.run([sys.executable, "-m", "odtkit.cli", "device", "stm32f74"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "stm32f746" in done.stderr and done.stdout == ""


def test_a_reader_that_leaves_early_gets_no_traceback():
    """`odtkit devices | head -1`: the pipe closes before the table is written."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # nobody will read: the first write fails with EPIPE
    try:
        done = subprocess.run([sys.executable, "-m", "odtkit.cli", "devices"], cwd=ROOT,
                              stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write_end)
    assert done.returncode == 1 and done.stderr == ""


# ---------------------------------------------------------------- version, models, estimate, lab


def test_version_is_the_installed_distributions(capsys):
    from importlib.metadata import version

    code, out, err = run(capsys, "--version")
    assert code == 0 and err == ""
    assert out.strip() == f"odtkit {version('odtkit')}"


def test_models_lists_the_zoo_with_parameter_counts(capsys):
    import odtkit as odt

    code, out, err = run(capsys, "models")
    assert code == 0 and err == ""
    rows = out.splitlines()[2:]
    assert [r.split()[0] for r in rows] == odt.models.names()
    mlp = next(r.split() for r in rows if r.startswith("mlp "))
    # the lab MLP on 8x8 digits: weights and biases of its Linear layers, counted here
    model = odt.models.create("mlp")
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert mlp[1] == "1x8x8"
    assert int(mlp[2].replace(",", "")) == sum(
        m.in_features * m.out_features + m.out_features for m in linears)
    assert mlp[3] == "yes"


def test_estimate_json_equals_the_library_estimate(capsys):
    import json

    import odtkit as odt

    code, out, err = run(capsys, "estimate", "--model", "mbv2-tiny", "--scheme", "bias-only",
                         "--batch", "8", "--json")
    assert code == 0 and err == ""
    shown = json.loads(out)
    model = odt.models.create("mbv2-tiny")
    ref = odt.estimate(model, odt.models.example_input(model, batch_size=8),
                       odt.plan(model, "bias-only"))
    assert shown["by_category"] == ref.by_category
    assert (shown["peak_bytes"], shown["allocator_peak_bytes"], shown["total_bytes"]) == (
        ref.peak_bytes, ref.allocator_peak_bytes, sum(ref.by_category.values()))
    # what is live at the peak, and where: the report's own split, summing to the peak
    assert shown["peak_components"] == ref.peak_components and shown["peak_at"] == ref.peak_at
    assert sum(shown["peak_components"].values()) == shown["peak_bytes"]
    assert (shown["scheme"], shown["batch_size"], shown["engine"], shown["optimizer"]) == (
        "bias-only", 8, "pytorch", "sgd")
    assert "fit" not in shown


def test_estimate_json_with_a_device_carries_the_fit_and_what_breaks_it(capsys):
    import json

    import odtkit as odt

    code, out, _ = run(capsys, "estimate", "--model", "mbv2-tiny", "--scheme", "bias-only",
                       "--batch", "8", "--engine", "lean", "--device", "stm32f746", "--json")
    assert code == 0
    shown = json.loads(out)["fit"]
    model = odt.models.create("mbv2-tiny")
    ref = odt.device("stm32f746").fit(odt.estimate(
        model, odt.models.example_input(model, batch_size=8), odt.plan(model, "bias-only"),
        engine="lean"))
    assert (shown["fits"], shown["needed_bytes"], shown["available_bytes"]) == (
        ref.fits, ref.needed_bytes, ref.available_bytes)
    assert shown["peak_components"] == ref.peak_components
    assert shown["peak_component"] == ref.peak_component == "transient"
    assert not shown["fits"]


def test_estimate_table_with_a_device_gives_the_verdict(capsys):
    import odtkit as odt

    code, out, _ = run(capsys, "estimate", "--model", "mlp", "--scheme", "last:1", "--batch",
                       "4", "--optimizer", "SGD-M", "--engine", "lean", "--device", "STM32F746")
    assert code == 0
    model = odt.models.create("mlp")
    ref = odt.estimate(model, odt.models.example_input(model, batch_size=4),
                       odt.plan(model, "last:1"), optimizer="sgd-m", engine="lean")
    assert out.splitlines()[0] == "estimate (lean, sgd-m, scheme last:1, fp32, batch 4)"
    assert ["peak", *odt.format_bytes(ref.peak_bytes).split()] in [
        line.split() for line in out.splitlines()]
    assert out.splitlines()[-1] == odt.device("stm32f746").fit(ref).verdict


@pytest.mark.parametrize(("argv", "message"), [
    (["--model", "mbv3"], "unknown model 'mbv3'. Did you mean 'mbv2-tiny'?"),
    (["--model", "mlp", "--scheme", "bias"], "unknown scheme 'bias'. Did you mean 'bias-only'?"),
    (["--model", "mlp", "--batch", "eight"], "--batch must be a whole number >= 1, got 'eight'"),
    (["--model", "mlp", "--batch", "0"], "--batch must be an integer >= 1"),
    (["--model", "mlp", "--optimizer", "adamw"], "unknown optimizer 'adamw'. Did you mean 'adam'?"),
    (["--model", "mlp", "--precision", "int4"], "int4"),
    (["--model", "mlp", "--device", "esp33"], "esp32"),
])
def test_estimate_errors_name_the_bad_value_and_the_choices(capsys, argv, message):
    code, out, err = run(capsys, "estimate", *argv)
    assert code == 2 and out == ""
    assert err.startswith("odtkit: ") and message in err


def test_lab_starts_jupyterlab_on_the_lab_book(capsys, monkeypatch):
    started = []
    monkeypatch.setattr(cli.os, "execv", lambda path, argv: started.append((path, argv)))
    monkeypatch.setattr("shutil.which", lambda name, path=None: f"/env/bin/{name}")
    code, _, err = run(capsys, "lab")
    assert code == 0 and err == ""
    [(path, argv)] = started
    assert path == argv[0] == "/env/bin/jupyter" and argv[1] == "lab"
    root = Path(next(a for a in argv if a.startswith("--ServerApp.root_dir=")).split("=", 1)[1])
    assert root == ROOT / "labs" and (root / "00_getting_started.ipynb").is_file()


def test_lab_without_jupyterlab_says_how_to_get_it(capsys, monkeypatch):
    monkeypatch.setattr("shutil.which", lambda name, path=None: None)
    code, out, err = run(capsys, "lab")
    assert code == 2 and out == ""
    assert "JupyterLab is not installed" in err and "make lab" in err


# ---------------------------------------------------------------- app


class _FakeServer:
    """Stands in for the Voila process: records the command, 'runs' until Ctrl-C."""

    started: list[list[str]] = []

    def __init__(self, command, env=None, **_):
        self.command, self.env, self.returncode, self.signals = command, env, None, []
        _FakeServer.started.append(self)

    def poll(self):
        return self.returncode

    def wait(self, timeout=None):
        if self.returncode is None:
            raise KeyboardInterrupt  # the user pressed Ctrl-C while it served
        return self.returncode

    def terminate(self):
        self.signals.append("TERM")
        self.returncode = -15


def test_app_serves_the_notebook_on_localhost_and_stops_on_ctrl_c(capsys, monkeypatch):
    pytest.importorskip("voila")
    from odtkit import app

    monkeypatch.setattr(app.subprocess, "Popen", _FakeServer)
    _FakeServer.started.clear()
    port = free_port()
    code, out, err = run(capsys, "app", "--port", str(port), "--no-browser")
    assert code == 0 and "stopping" in err
    [server] = _FakeServer.started
    assert server.signals == ["TERM"]  # stopped, not left running
    command = server.command
    assert command[:4] == [sys.executable, "-m", "voila", str(app.notebook_path())]
    assert "--Voila.ip=127.0.0.1" in command and f"--port={port}" in command
    token = next(a for a in command if a.startswith("--token=")).split("=", 1)[1]
    assert len(token) >= 16
    assert out.splitlines()[0] == (f"odtkit app: the budget explorer at "
                                   f"http://127.0.0.1:{port}/?token={token}")


def test_app_tokens_differ_between_starts(capsys, monkeypatch):
    pytest.importorskip("voila")
    from odtkit import app

    monkeypatch.setattr(app.subprocess, "Popen", _FakeServer)
    _FakeServer.started.clear()
    for _ in range(2):
        run(capsys, "app", "--port", str(free_port()), "--no-browser")
    tokens = [next(a for a in s.command if a.startswith("--token=")) for s in _FakeServer.started]
    assert tokens[0] != tokens[1]


def test_app_opens_the_browser_on_the_url_with_its_token(capsys, monkeypatch):
    pytest.importorskip("voila")
    from odtkit import app

    opened = []
    monkeypatch.setattr(app.subprocess, "Popen", _FakeServer)
    monkeypatch.setattr(app, "wait_until_listening", lambda port, server=None: True)
    monkeypatch.setattr("webbrowser.open", opened.append)
    port = free_port()
    code, out, _ = run(capsys, "app", "--port", str(port))
    assert code == 0
    assert opened == [out.splitlines()[0].split(" at ", 1)[1]]
    assert opened[0].startswith(f"http://127.0.0.1:{port}/?token=")


def test_app_default_port_is_the_apps_and_its_help_says_it(capsys):
    """The CLI writes the default out (no command's start-up imports odtkit.app): it must stay
    odtkit.app.DEFAULT_PORT."""
    from odtkit import app

    code, out, _ = run(capsys, "app", "--help")
    assert code == 0 and f"(default {app.DEFAULT_PORT})" in " ".join(out.split())
    assert int(cli._parser().parse_args(["app"]).port) == app.DEFAULT_PORT


@pytest.mark.parametrize(("port", "message"), [
    ("http", "--port must be a whole number in 1..65535, got 'http'"),
    ("0", "--port must be a whole number in 1..65535, got 0"),
    ("65536", "--port must be a whole number in 1..65535, got 65536"),
])
def test_app_bad_port_exits_2_naming_it(capsys, port, message):
    code, out, err = run(capsys, "app", "--port", port)
    assert code == 2 and out == ""
    assert err.startswith("odtkit: ") and message in err


def test_app_port_in_use_exits_2_naming_it(capsys):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, out, err = run(capsys, "app", "--port", str(port), "--no-browser")
    assert code == 2 and out == ""
    assert f"--port {port} is already in use on 127.0.0.1" in err and "--port=" in err


def test_app_without_voila_says_how_to_get_it(capsys, monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "voila" else find_spec(name, *a))
    code, out, err = run(capsys, "app", "--port", str(free_port()), "--no-browser")
    assert code == 2 and out == ""
    assert "Voila is not installed" in err
    assert 'pip install "odtkit[app]"' in err and "make app" in err


def test_app_without_the_contribution_table_names_the_fix(capsys, monkeypatch, tmp_path):
    pytest.importorskip("voila")
    monkeypatch.setenv("ODTKIT_DATA_DIR", str(tmp_path))
    code, out, err = run(capsys, "app", "--port", str(free_port()), "--no-browser")
    assert code == 2 and out == ""
    assert str(tmp_path / "sparse" / "contributions-mcunet-tiny-digits-shift.json") in err
    assert "build_contributions.py" in err
