"""Lab 05 in full: every run the notebook's prose cites, written to benchmarks/results/lab05.json.

The compressors of ``odt.lab.SUITE`` (seed 0, 30 epochs, 4 simulated workers), dense and
top-k 0.1% + EF over three seeds, the DGC ablation, the PowerSGD rank sweep and the three
federated fleets (40 rounds): final accuracy, curves, payload and wire bytes, modelled round
times over BLE and LTE, and the first epoch of each run, which the notebook re-runs in CI
and checks against this file. Settings come from ``odtkit.lab`` (the notebook reads the
same ones). One thread, so the numbers are those of the notebook.

    python benchmarks/lab05.py            # the full run: minutes of one core (wall_s in the file)
    python benchmarks/lab05.py --check    # re-run the first epoch of every run and compare
                                          # with the committed file (exit 1 on a difference)
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).resolve().parent / "results" / "lab05.json"


def config() -> dict[str, Any]:
    from odtkit.lab import LAB_TASK, LAB_WIDTH, SUITE
    from odtkit.lab import lab05 as lab

    return {"task": LAB_TASK, "model": f"mlp width {LAB_WIDTH}", "epochs": lab.LAB05_EPOCHS,
            "seeds": list(lab.LAB05_SEEDS), "seeded": list(lab.LAB05_SEEDED),
            "workers": lab.LAB05_WORKERS, "batch_per_worker": lab.LAB05_BATCH,
            "round_time_device": lab.LAB05_DEVICE, "links": list(lab.LAB05_LINKS),
            "suite": SUITE, "dgc_ablation": lab.DGC_ABLATION,
            "powersgd_ranks": list(lab.POWERSGD_RANKS), "fleet": lab.FLEET,
            "fleet_runs": lab.FLEET_RUNS, "threads": torch.get_num_threads()}


def dumps(result: dict[str, Any]) -> str:
    """JSON with indent 1, lists of plain numbers kept on one line (a readable diff)."""
    text = json.dumps(result, indent=1)
    return re.sub(r"\[\s+([-\w.,\s\"]*?)\s+\]",
                  lambda m: "[" + " ".join(m.group(1).split()) + "]", text) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="re-run the first epoch of every run and compare with the file")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    import odtkit as odt
    from odtkit.lab import lab05 as lab

    task = odt.datasets.load(odt.lab.LAB_TASK)
    started = time.perf_counter()
    if args.check:
        live = lab.run_lab(task, max_steps=lab.steps_per_epoch(task),
                           fleet_rounds=lab.CHECK_ROUNDS, seeds=(0,))
        wrong = lab.lab05_differences(live, lab.load_lab05_results(RESULTS))
        print("\n".join(wrong) or f"the first epoch of every run equals {RESULTS.name}")
        return 1 if wrong else 0
    result = {"what": "lab 05 in full: the runs its prose cites (benchmarks/lab05.py)",
              "torch": torch.__version__, "config": config(), **lab.run_lab(task),
              "wall_s": time.perf_counter() - started}
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(dumps(result))
    print(f"wrote {RESULTS} in {result['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
