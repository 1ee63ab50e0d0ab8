"""What the benchmarks share: independent runs spread over processes."""

from __future__ import annotations

import multiprocessing
from typing import Any


def run_parallel(fn: Any, jobs: list[Any], processes: int) -> list[Any]:
    """``fn`` over ``jobs`` in ``processes`` spawned workers, results in job order."""
    pool = multiprocessing.get_context("spawn").Pool(processes)
    try:
        return pool.map(fn, jobs, chunksize=1)
    finally:
        pool.close()
        pool.join()
