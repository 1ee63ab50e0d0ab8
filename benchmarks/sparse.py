"""Sparse updates under a memory budget: accuracy against training memory, plan by plan.

The transfer task of lab 03: mcunet-tiny, pretrained on the source domain of digits-shift
(odtkit's shipped weights), adapts to the shifted target domain. Every plan trains through
``odt.train`` with the same settings as the cached contribution table that the search reads
(SGD-M, lr 0.05, batches of 32) for ``EPOCHS`` epochs, over 3 seeds; norm statistics stay
frozen in every plan, full included (batch statistics are undefined at batch 1, the batch
the memory is counted at). The plans:

- "none" (no training: the accuracy of the pretrained model), "full", "bias-only",
  "norm-only";
- "last:K" for K = 1, 3, 5, ..., 25: the classifier alone, then the classifier and the last
  1 .. 12 convolutions with their BatchNorms (a layer is a module with parameters);
- "channel-sparse": the last two blocks' convolutions at a quarter of their input
  channels (largest weight magnitude), their BatchNorm biases and the classifier, by hand;
- "searched @ budget": ``odt.sparse.search`` (knapsack over the cached contribution table,
  lean engine) at each budget of ``BUDGET_POINTS``.

Budgets: fixed before any plan was trained, at 1/5, 2/5, 3/5 and 4/5 of the way from the
peak of bias-only to the peak of full (lean engine, batch 1, SGD-M): the range where a
choice exists, since bias-only is the smallest update that trains every layer and full the
largest. Nothing was tuned to these numbers; the same epochs, lr and optimizer for every plan.

Memory: the training step at batch 1 (the device's batch), SGD-M, as ``odt.estimate`` and
``odt.measure`` count it, on the lean engine (the engine a sparse plan is meant for, and
the one budgets are checked on) and on the stock PyTorch engine, side by side. Training:
sparse plans on the lean engine, full on the PyTorch engine (the same gradients: only
memory and speed differ).

Targets (the issue's): at every budget, the searched plan's measured training memory (lean)
is within the budget and its accuracy (mean of 3 seeds) is at least that of the best last:K
plan whose measured memory fits the same budget; the budget explorer
(``odt.widgets.budget_explorer``) answers an estimate-only interaction (a budget already
searched, a device, the unit) in at most 100 ms median. A miss exits non-zero, printing
the numbers. The neuron-selection table (random, velocity and static selection over 7
budgets given as a share of parameters, 3 seeds; ``benchmarks/sparse_selection.py``) is the
"neuron_selection" section. Prints JSON; a full run (not --quick) writes
benchmarks/results/sparse.json.

    python benchmarks/sparse.py            # 3 seeds: ~10-11 min on 2 cores, both tables
    python benchmarks/sparse.py --skip-selection   # the Pareto table; keeps the selection section
    python benchmarks/sparse.py --quick    # 1 seed, 1 epoch: a smoke test, prints only
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from runner import run_parallel
from sparse_selection import SECTION, selection_table

RESULTS = Path(__file__).resolve().parent / "results" / "sparse.json"
MODEL, TASK = "mcunet-tiny", "digits-shift"
EPOCHS = 8  # measured: the full run (3 seeds x 21 trained plans) then takes ~4-5 min on 2 cores
LR, OPTIMIZER, BATCH = 0.05, "sgd-m", 32  # the contribution table's settings
MEMORY_BATCH = 1
LAST_KS = tuple(range(1, 26, 2))
BUDGET_POINTS = (0.2, 0.4, 0.6, 0.8)  # of the way from bias-only's peak to full's
EXPLORER_TARGET_S = 0.1
ENGINES = ("lean", "pytorch")
CHANNEL_SPARSE = {  # the last two blocks' convolutions at 1/4 of their channels, and the head
    "biases": 13,
    "weights": {**{f"blocks.{b}.block.{i}.0": 0.25 for b in (6, 7) for i in range(3)},
                "classifier": 1.0},
}


def pretrained() -> torch.nn.Module:
    import odtkit as odt

    return odt.models.create(MODEL, pretrained=True)


def fixed_plans(model: torch.nn.Module) -> dict[str, Any]:
    """Every plan but the searched ones, by label."""
    import odtkit as odt

    plans = {"none": odt.plan(model, "none"),
             "full": odt.plan(model, "full", norm_stats="frozen"),
             "bias-only": odt.plan(model, "bias-only"),
             "norm-only": odt.plan(model, "norm-only")}
    plans.update({f"last:{k}": odt.plan(model, f"last:{k}") for k in LAST_KS})
    plans["channel-sparse"] = odt.sparse.plan(model, **CHANNEL_SPARSE)
    return plans


def memory(model: torch.nn.Module, plan: Any) -> dict[str, Any]:
    """Estimated and measured peak of one training step at MEMORY_BATCH, per engine."""
    import odtkit as odt

    x = odt.models.example_input(model, batch_size=MEMORY_BATCH)
    out = {}
    for engine in ENGINES:
        est = odt.estimate(model, x, plan, optimizer=OPTIMIZER, engine=engine)
        meas = odt.measure(model, x, plan, optimizer=OPTIMIZER, engine=engine, rss=False)
        out[engine] = {"estimated_bytes": int(est.peak_bytes), "measured_bytes": int(meas.peak_bytes),
                       "relative_error": (est.peak_bytes - meas.peak_bytes) / meas.peak_bytes}
    return out


def search(model: torch.nn.Module, table: Any, budgets: dict[str, int]) -> dict[str, Any]:
    """``odt.sparse.search`` at every budget, with the table's engine, optimizer and batch."""
    import odtkit as odt

    s = table.settings_dict
    out = {}
    for label, budget in budgets.items():
        started = time.perf_counter()
        res = odt.sparse.search(model, table=table, budget_bytes=budget, engine=s["engine"],
                                optimizer=s["optimizer"], batch_size=s["batch_size"])
        out[label] = {"result": res, "search_s": time.perf_counter() - started}
    return out


def run_one(job: tuple[str, Any, str, int, int]) -> dict[str, Any]:
    """One plan, one seed, through odt.train."""
    import odtkit as odt

    label, plan, engine, seed, epochs = job
    torch.set_num_threads(1)
    task = odt.datasets.load(TASK)
    history = odt.train(pretrained(), task, plan, epochs=epochs, lr=LR, optimizer=OPTIMIZER,
                        batch_size=BATCH, seed=seed, engine=engine, progress=False)
    return {"label": label, "seed": seed, "test_acc": history.test_acc[-1],
            "curve": history.test_acc, "engine": history.engine, "train_s": sum(history.time_s)}


def explorer_timing(table: Any, budgets: list[int]) -> dict[str, Any]:
    """Median answer time of the budget explorer over estimate-only interactions: budgets
    it has searched once, devices, the unit; the first visits (searches) reported apart."""
    import odtkit as odt

    started = time.perf_counter()
    ex = odt.widgets.budget_explorer(MODEL, TASK, table=table)
    built_s = time.perf_counter() - started
    changes = ([("budget", float(b)) for b in budgets]
               + [("device", d) for d in ("nrf52840", "rp2040", "stm32h743", "stm32f746")]
               + [("unit", "share"), ("unit", "bytes")])

    def apply(change: tuple[str, Any]) -> float:
        ex.controls[change[0]].value = change[1]
        return ex.response_s

    first = [apply(c) for c in changes]  # a budget's first visit may search
    times = [apply(c) for c in (changes + changes)[:20]]
    return {"interactions": len(times), "median_s": statistics.median(times),
            "max_s": max(times), "first_visit_median_s": statistics.median(first),
            "first_visit_max_s": max(first), "build_s": built_s,
            "what": "budget changes to budgets searched once before, device changes and unit "
                    "toggles (bytes of training peak <-> share of the parameters), 20 in all "
                    "after one warm-up pass; response_s: the time from a change to the shown "
                    "numbers (figures are drawn after)"}


def summarize(runs: list[dict[str, Any]], labels: list[str]) -> dict[str, dict[str, Any]]:
    out = {}
    for label in labels:
        mine = sorted((r for r in runs if r["label"] == label), key=lambda r: r["seed"])
        accs = [r["test_acc"] for r in mine]
        out[label] = {"test_acc": accs, "mean": statistics.fmean(accs),
                      "std": statistics.pstdev(accs), "train_engine": mine[0]["engine"],
                      "curve_seed0": mine[0]["curve"],
                      "train_s": statistics.fmean(r["train_s"] for r in mine)}
    return out


def check_budgets(rows: dict[str, Any], budgets: dict[str, int]) -> list[dict[str, Any]]:
    """Per budget: the searched plan's measured peak against the budget, and its accuracy
    against the best last:K whose measured peak fits (both on the lean engine)."""
    out = []
    for label, budget in budgets.items():
        searched = rows[label]
        fitting = {k: r for k, r in rows.items() if k.startswith("last:")
                   and r["memory"]["lean"]["measured_bytes"] <= budget}
        best = max(fitting, key=lambda k: fitting[k]["mean"]) if fitting else None
        peak = searched["memory"]["lean"]["measured_bytes"]
        out.append({
            "budget": label, "budget_bytes": budget, "searched_measured_bytes": peak,
            "within_budget": peak <= budget, "searched_mean": searched["mean"],
            "searched_std": searched["std"], "best_last_k": best,
            "best_last_k_mean": None if best is None else fitting[best]["mean"],
            "best_last_k_std": None if best is None else fitting[best]["std"],
            "best_last_k_measured_bytes": None if best is None
            else fitting[best]["memory"]["lean"]["measured_bytes"],
            "last_k_fitting": sorted(fitting, key=lambda k: int(k.split(":")[1])),
            "at_least_best_last_k": best is None or searched["mean"] >= fitting[best]["mean"]})
    return out


def plan_info(plan: Any) -> dict[str, Any]:
    return {"trainable_params": plan.trainable_numel, "trainable_share": plan.trainable_share,
            "norm_stats": plan.norm_stats, "channel_selections": len(plan.channels)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 seed, 1 epoch (smoke)")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per plan (3)")
    parser.add_argument("--epochs", type=int, default=None, help=f"epochs per run ({EPOCHS})")
    parser.add_argument("--jobs", type=int, default=2, help="parallel processes (2)")
    parser.add_argument("--skip-selection", action="store_true",
                        help="keep the neuron-selection section already in sparse.json "
                             "instead of re-running it (benchmarks/sparse_selection.py)")
    args = parser.parse_args()
    kept = None  # checked before any run: a missing section must not cost a full run
    if args.skip_selection:
        kept = json.loads(RESULTS.read_text()).get(SECTION) if RESULTS.is_file() else None
        if kept is None:
            raise SystemExit(f"--skip-selection keeps the {SECTION!r} section of {RESULTS}, "
                             "which has none; run without --skip-selection")
    seeds = args.seeds or (1 if args.quick else 3)
    epochs = args.epochs or (1 if args.quick else EPOCHS)
    import odtkit as odt

    torch.set_num_threads(1)
    started = time.perf_counter()
    model, task = pretrained(), odt.datasets.load(TASK)
    table = odt.sparse.contributions(model, task)  # the cached table where it matches
    plans = fixed_plans(model)
    infos = {label: memory(model, plan) for label, plan in plans.items()}
    low = infos["bias-only"]["lean"]["estimated_bytes"]
    high = infos["full"]["lean"]["estimated_bytes"]
    budgets = {f"searched @ {p:g}": int(low + p * (high - low)) for p in BUDGET_POINTS}
    found = search(model, table, budgets)
    for label, f in found.items():
        plans[label] = f["result"].plan
        infos[label] = memory(model, f["result"].plan)
    trained = [k for k in plans if k != "none"]
    # seed-major, plans interleaved: whatever slows the machine slows every plan
    jobs = [(label, plans[label], "pytorch" if label == "full" else "lean", seed, epochs)
            for seed in range(seeds) for label in trained]
    runs = run_parallel(run_one, jobs, args.jobs)
    rows = summarize(runs, trained)
    before = float(odt.training.evaluate(model.eval(), task.x_test, task.y_test))
    rows["none"] = {"test_acc": [before], "mean": before, "std": 0.0, "train_engine": None,
                    "note": "not trained: the pretrained model's accuracy on the target domain"}
    for label in plans:
        rows[label] = {**plan_info(plans[label]), "memory": infos[label], **rows[label]}
    for label, f in found.items():
        res = f["result"]
        rows[label].update({"budget_bytes": budgets[label], "scheme": res.describe(),
                            "biases": res.biases, "weights": dict(res.weights),
                            "predicted_acc": res.predicted_acc, "search_s": f["search_s"],
                            "estimates_searched": res.evaluated})
    checks = check_budgets(rows, budgets)
    timing = explorer_timing(table, list(budgets.values()))
    targets = {"searched_within_budget_and_at_least_best_last_k":
               all(c["within_budget"] and c["at_least_best_last_k"] for c in checks),
               "explorer_median_at_most_100_ms": timing["median_s"] <= EXPLORER_TARGET_S}
    result = {
        "model": MODEL, "task": TASK, "epochs": epochs, "seeds": seeds, "lr": LR,
        "optimizer": OPTIMIZER, "batch": BATCH, "memory_batch": MEMORY_BATCH,
        "budget_rule": "budget = bias-only peak + p * (full peak - bias-only peak), p in "
                       f"{list(BUDGET_POINTS)}; peaks: odt.estimate, lean engine, batch "
                       f"{MEMORY_BATCH}, {OPTIMIZER}",
        "budgets": budgets, "memory_engines": list(ENGINES),
        "memory_note": "training peak of one step at batch 1; lean is the engine budgets are "
                       "checked on; pytorch is stock autograd",
        "table": {"baseline_acc": table.baseline_acc, "settings": table.settings_dict},
        "quick": args.quick, "jobs": args.jobs, "threads_per_job": 1,
        "torch": torch.__version__, "targets": targets, "budget_checks": checks,
        "explorer": timing, "plans": rows, "wall_s": time.perf_counter() - started}
    if kept is not None:
        result[SECTION] = kept
    else:
        result[SECTION] = selection_table(args.quick, args.seeds, None, args.jobs)
    text = json.dumps(result, indent=1)
    if not args.quick:  # a smoke run must not overwrite the reference numbers
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(text + "\n")
    print(text)
    misses = []
    for c in checks:
        if not (c["within_budget"] and c["at_least_best_last_k"]):
            misses.append(f"{c['budget']} ({c['budget_bytes']} B): searched measured "
                          f"{c['searched_measured_bytes']} B, accuracy "
                          f"{100 * c['searched_mean']:.2f}%; best fitting {c['best_last_k']} "
                          f"{100 * (c['best_last_k_mean'] or 0):.2f}%")
    if not targets["explorer_median_at_most_100_ms"]:
        misses.append(f"explorer median {1000 * timing['median_s']:.1f} ms > "
                      f"{1000 * EXPLORER_TARGET_S:.0f} ms")
    if misses:
        raise SystemExit("target missed: " + "; ".join(misses))


if __name__ == "__main__":
    main()
