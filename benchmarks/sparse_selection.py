"""Neuron selection under a parameter budget: random, NEq velocity and static, on digits-shift.

mcunet-tiny, pretrained on the source domain of digits-shift (odtkit's shipped weights),
adapts to the shifted target domain with ``odt.sparse.train_selected``: each epoch trains
only the neurons (output channels of conv and Linear layers, with their weight slice and
bias) that a method selects within a budget given as a share of the parameters, as in
Quelennec et al. (2023). BatchNorm is folded into the convolutions first (as deployment
graphs do), so every parameter belongs to a neuron and the 100% budget is the full update.
Methods: "random" (a new draw every epoch), "velocity" (NEq velocity, re-selected every
epoch; the first epoch on the random draw), "static" (the layers nearest the output first,
by weight norm, chosen once). One optimizer and learning rate for every cell, picked on the
full update (100%, where the methods coincide), never per method or budget.

The table is the "neuron_selection" section of benchmarks/results/sparse.json, which
``benchmarks/sparse.py`` writes whole (its Pareto table, this table and the explorer's
timing); run alone, this script prints the section as JSON and, on a full run, replaces
that section of the file: per budget and method the final target test accuracy over seeds
(mean, population std), the parameter share used, the mean accuracy curve, and velocity
minus random per budget.

    python benchmarks/sparse_selection.py            # 7 budgets x 3 methods x 3 seeds, 10 epochs
    python benchmarks/sparse_selection.py --quick    # 3 budgets, 1 seed, 2 epochs: a smoke test
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from runner import run_parallel

import odtkit as odt
from odtkit.quant import fold_bn_

MODEL, TASK = "mcunet-tiny", "digits-shift"
LR, OPTIMIZER, BATCH = 0.01, "sgd-m", 32
METHODS = odt.sparse.SELECTION_METHODS
RESULTS = Path(__file__).resolve().parent / "results" / "sparse.json"
SECTION = "neuron_selection"


def build() -> torch.nn.Module:
    """The pretrained model with BatchNorm folded into its convolutions."""
    return fold_bn_(odt.models.create(MODEL, pretrained=True).eval())


def run_one(job: tuple[float, str, int, int]) -> dict[str, Any]:
    """One budget, one method, one seed."""
    share, method, seed, epochs = job
    torch.set_num_threads(1)
    task = odt.datasets.load(TASK)
    started = time.perf_counter()
    res = odt.sparse.train_selected(build(), task, share, method, epochs=epochs, seed=seed,
                                    lr=LR, optimizer=OPTIMIZER, batch_size=BATCH)
    out = res.as_dict()
    out["wall_s"] = time.perf_counter() - started
    if res.velocities:  # share of neurons at equilibrium (|v| < eps) after each epoch
        out["frozen_share"] = [float(torch.cat([v.abs() < 1e-3 for v in per.values()])
                                     .float().mean()) for per in res.velocities]
    return out


def _cell(runs: list[dict[str, Any]]) -> dict[str, Any]:
    runs = sorted(runs, key=lambda r: r["seed"])
    accs = [r["test_acc"][-1] for r in runs]
    curves = list(zip(*(r["test_acc"] for r in runs), strict=True))
    cell = {"mean": statistics.fmean(accs), "std": statistics.pstdev(accs), "test_acc": accs,
            "share_used": [r["share_used"] for r in runs],
            "curve_mean": [statistics.fmean(c) for c in curves],
            "wall_s": statistics.fmean(r["wall_s"] for r in runs)}
    cell["counts_last_epoch_seed0"] = runs[0]["counts"][-1]
    if "frozen_share" in runs[0]:
        cell["frozen_share_mean"] = [statistics.fmean(f) for f in
                                     zip(*(r["frozen_share"] for r in runs), strict=True)]
    return cell


def _early_share(counts: dict[str, int]) -> float:
    """Share of the selected neurons that sit in the first half of the neuron layers."""
    layers = [n for n, m in build().named_modules()
              if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    first = set(layers[: len(layers) // 2])
    return sum(n for k, n in counts.items() if k in first) / sum(counts.values())


def summarize(runs: list[dict[str, Any]], budgets: list[float]) -> dict[str, Any]:
    cells = {m: {f"{b:g}": _cell([r for r in runs if r["method"] == m
                                  and r["budget_share"] == b]) for b in budgets}
             for m in METHODS}
    gap = {f"{b:g}": cells["velocity"][f"{b:g}"]["mean"] - cells["random"][f"{b:g}"]["mean"]
           for b in budgets}
    partial = [f"{b:g}" for b in budgets if b < 1]
    average = {m: statistics.fmean(cells[m][k]["mean"] for k in partial) for m in METHODS}
    early = {m: statistics.fmean(_early_share(cells[m][k]["counts_last_epoch_seed0"])
                                 for k in partial) for m in METHODS}
    return {"cells": cells, "velocity_minus_random": gap,
            "early_neuron_share": early,
            "average_below_100": average,
            "velocity_beats_random_on_average": average["velocity"] > average["random"],
            "velocity_wins": sum(gap[k] > 0 for k in partial),
            "velocity_ties": sum(gap[k] == 0 for k in partial),
            "budgets_below_100": len(partial),
            "max_share_over_budget": max(max(s - float(k) for s in cells[m][k]["share_used"])
                                         for m in METHODS for k in cells[m])}


def notes(summary: dict[str, Any], seeds: int, test_samples: int) -> list[str]:
    avg = summary["average_below_100"]
    verdict = ("beats" if summary["velocity_beats_random_on_average"] else "does not beat")
    return [
        f"Averaged over the budgets below 100%, velocity {verdict} random here: "
        f"{avg['velocity']:.4f} vs {avg['random']:.4f} (static {avg['static']:.4f}); velocity "
        f"is ahead at {summary['velocity_wins']} of {summary['budgets_below_100']} budgets.",
        f"Where the neurons go (last epoch, seed 0, averaged over the budgets below 100%): "
        f"{summary['early_neuron_share']['random']:.0%} of random's selected neurons sit in "
        f"the first half of the layers, {summary['early_neuron_share']['velocity']:.0%} of "
        f"velocity's, {summary['early_neuron_share']['static']:.0%} of static's.",
        f"One test sample is {1 / test_samples:.4f} of accuracy ({test_samples} test samples) "
        f"and there are {seeds} seeds: differences of a point or two are within the noise.",
        "No setting was tuned per method: one learning rate (0.01, SGD with momentum 0.9, "
        "picked from 0.005, 0.01, 0.02, 0.05 on the 100% budget, where 0.05 diverged), the "
        "optimizer restarts each epoch for every method, the same data order per seed.",
        "Selection follows Velocity.select: |velocity| unnormalized, largest first; the "
        "reference code of Quelennec et al. divides each neuron's velocity by its parameter "
        "count before ranking.",
    ]


def selection_table(quick: bool = False, seeds: int | None = None, epochs: int | None = None,
                    jobs: int = 2) -> dict[str, Any]:
    """The neuron-selection table (see the module docstring) as a JSON-able dict."""
    seeds = seeds or (1 if quick else 3)
    epochs = epochs or (2 if quick else 10)
    budgets = [0.088, 0.274, 1.0] if quick else list(odt.sparse.BUDGET_SHARES)
    torch.set_num_threads(1)
    task = odt.datasets.load(TASK)
    started = time.perf_counter()
    model = build()
    before = odt.training.evaluate(model, task.x_test, task.y_test)
    # at 100% every method selects every neuron in every epoch: one run serves all three
    work = [(b, m, s, epochs) for b in budgets for m in METHODS for s in range(seeds)
            if b < 1 or m == METHODS[0]]
    runs = run_parallel(run_one, work, jobs)
    runs += [{**r, "method": m} for r in runs if r["budget_share"] == 1 for m in METHODS[1:]]
    summary = summarize(runs, budgets)
    return {"model": MODEL, "task": TASK, "bn": "folded into the convolutions",
            "total_params": odt.sparse.total_params(model),
            "neuron": "output channel of a conv or Linear layer: its weight slice + bias",
            "methods": list(METHODS), "budget_unit": "share of parameters",
            "budgets": budgets, "epochs": epochs, "seeds": seeds,
            "lr": LR, "optimizer": OPTIMIZER, "batch": BATCH,
            "x_val": "first 64 training inputs", "velocity_first_epoch": "random draw",
            "optimizer_state": "fresh each epoch (every method)",
            "test_samples": len(task.x_test), "test_acc_before": before,
            "std": "population std over seeds", **summary,
            "notes": notes(summary, seeds, len(task.x_test)),
            "quick": quick, "jobs": jobs, "threads_per_job": 1,
            "torch": torch.__version__, "wall_s": time.perf_counter() - started}


def write_section(table: dict[str, Any], path: Path = RESULTS) -> None:
    """Replace the neuron-selection section of ``path`` (sparse.json), atomically."""
    whole = json.loads(path.read_text()) if path.is_file() else {}
    whole[SECTION] = table
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(whole, indent=1) + "\n")
    tmp.replace(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 budgets, 1 seed, 2 epochs")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per cell (3)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs per run (10)")
    parser.add_argument("--jobs", type=int, default=2, help="parallel processes (2)")
    args = parser.parse_args()
    table = selection_table(args.quick, args.seeds, args.epochs, args.jobs)
    if not args.quick:  # a smoke run must not overwrite the reference numbers
        write_section(table)
    print(json.dumps(table, indent=1))


if __name__ == "__main__":
    main()
