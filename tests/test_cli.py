"""The odtkit command line: catalogue tables, one profile with sources, helpful errors."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

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
