"""nbval's sanitize file (labs/sanitize.cfg) masks memory addresses only: every number a lab
prints, modelled times included, is compared (wall-clock outputs are marked
``# NBVAL_IGNORE_OUTPUT`` in their cells instead)."""

from __future__ import annotations

import configparser
import re
from pathlib import Path

import pytest

CFG = Path(__file__).resolve().parents[1] / "labs" / "sanitize.cfg"


def _rules() -> list[tuple[re.Pattern[str], str]]:
    parser = configparser.ConfigParser()
    parser.read(CFG)
    return [(re.compile(parser[s]["regex"]), parser[s]["replace"]) for s in parser.sections()]


def _sanitized(text: str) -> str:
    for pattern, replacement in _rules():
        text = pattern.sub(replacement, text)
    return text


def test_addresses_are_masked():
    assert _sanitized("<Figure at 0x7f3a2b1c4d5e>") == "<Figure at 0xADDRESS>"


@pytest.mark.parametrize("printed", [
    "upload 1.704 s, receive 1.704 s", "one step ~327 us (fp32 roofline)", "peak   948 KiB",
    "top-k 0.1% + EF: 94.6%", "3.408 s  0.813 s   79.0%  allreduce", "12.5 it/s", "0.4 ms",
])
def test_numbers_the_labs_print_are_compared(printed):
    assert _sanitized(printed) == printed
