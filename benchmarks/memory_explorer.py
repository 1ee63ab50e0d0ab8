"""How fast the memory explorer (``odt.widgets.memory_explorer``) answers a moved control.

Every answer is estimate-only (odt.estimate, device.fit, the shown HTML). A setting seen
before (or a new device for it: the estimate does not depend on the device) is answered
from the explorer's cache; a new setting costs one estimate, its trace built once per
input shape. Reported: the median and slowest answer (``ex.response_s``) over revisited
settings, device changes and first visits, the first visits counted apart, and beside
them the median of one odt.estimate call for the starting setting (trace cached) in the
same run. Target: a revisited setting or a device change answers in at most 5 ms median.
Prints JSON; without --quick also writes benchmarks/results/memory_explorer.json.

    python benchmarks/memory_explorer.py
    python benchmarks/memory_explorer.py --quick    # fewer settings, prints only
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results" / "memory_explorer.json"
TARGET_S = 0.005


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    import odtkit as odt

    ex = odt.widgets.memory_explorer("mbv2-tiny", batch_size=8, scheme="bias-only",
                                     engine="lean", device="stm32f746")
    batches = (1, 2, 4, 8) if args.quick else (1, 2, 4, 8, 16, 32)
    settings = ([("batch_size", b) for b in batches]
                + [("scheme", s) for s in ("full", "last:2", "bias-only")]
                + [("engine", e) for e in ("pytorch", "lean")])
    devices = [("device", d) for d in ("raspberry-pi-4", "rp2040", "stm32h743", "stm32f746")]

    seen = {id(ex.report)}  # the explorer keeps every answer: a new one is a new object

    def apply(change: tuple[str, object]) -> tuple[float, bool]:
        ex.controls[change[0]].value = change[1]
        new = id(ex.report) not in seen
        seen.add(id(ex.report))
        return ex.response_s, new

    # the first pass comes back to settings it has seen (batch 8, bias-only, lean): those
    # answers are cached ones, counted as such
    answers = [apply(c) for c in settings + settings + devices + settings]
    first = [s for s, new in answers if new]
    again = [s for s, new in answers if not new]
    model = odt.models.create("mbv2-tiny").train()
    x = odt.models.example_input(model, batch_size=8)
    plan = odt.plan(model, "bias-only", norm_stats="frozen")
    odt.estimate(model, x, plan, engine="lean")
    one = []
    for _ in range(5 if args.quick else 15):
        started = time.perf_counter()
        odt.estimate(model, x, plan, engine="lean")
        one.append(time.perf_counter() - started)
    result = {
        "cached_interactions": len(again), "cached_median_s": statistics.median(again),
        "cached_max_s": max(again), "first_visits": len(first),
        "first_visit_median_s": statistics.median(first), "first_visit_max_s": max(first),
        "estimate_median_s": statistics.median(one), "target_cached_median_s": TARGET_S,
        "meets_target": statistics.median(again) <= TARGET_S,
        "torch": torch.__version__, "threads": 1,
    }
    text = json.dumps(result, indent=2)
    print(text)
    if not args.quick:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(text + "\n")
    if not result["meets_target"]:
        sys.exit(f"a cached answer took {result['cached_median_s'] * 1e3:.2f} ms median, "
                 f"over the {TARGET_S * 1e3:.0f} ms target")


if __name__ == "__main__":
    main()
