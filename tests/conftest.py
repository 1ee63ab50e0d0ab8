"""Suite-wide settings: one thread (tiny models on 2 busy cores are far faster so) and
a headless matplotlib backend."""

from __future__ import annotations

import matplotlib
import pytest
import torch

matplotlib.use("Agg")
torch.set_num_threads(1)


@pytest.fixture
def single_thread():
    """One torch thread for the test, restored after it (a test that changes the count, or
    bit-exact comparisons across processes, need it pinned)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def task():
    """scikit-learn's digits as an odtkit Task (loaded once per test session)."""
    import odtkit as odt

    return odt.datasets.load("digits")
