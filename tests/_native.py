"""The compiled ops' tests need the build: skipped where it is missing, a failure in CI
(where ``make setup`` builds it)."""

from __future__ import annotations

import os

import pytest

from odtkit.engine import native


def native_or_skip() -> None:
    if native.mode() == "0":
        pytest.skip("ODTKIT_NATIVE=0: the compiled ops are switched off")
    if not native.available():
        if os.environ.get("CI"):
            pytest.fail("odtkit's compiled ops are not built: `make setup` builds them "
                        "(`odtkit native` says why it cannot)")
        pytest.skip("odtkit's compiled ops are not built: run `odtkit native`")
