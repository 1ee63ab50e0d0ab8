"""Training the int8 graph: fp32 vs int8 (SGD-M, Adam, SGD-M + QAS) on digits-shift.

mcunet-tiny, pretrained on the source domain of digits-shift (odtkit's shipped weights),
adapts to the shifted target domain by training its last two inverted-residual blocks and
the classifier. "fp32" trains the BN-folded float model; the int8 variants train the
converted int8 graph (a float classifier head, as in the paper's code; activation ranges
from 256 target-domain training inputs) in integer units, re-rounding weights and biases
after every step, with "nearest" and "stochastic" rounding. One learning rate per
optimizer, the same for fp32 and int8 (no per-variant tuning).

Each run is odtkit's training loop (``odt.training.Loop``); the int8 ones re-round through
``round_after_step_`` on the loop's optimizer. Prints JSON: per variant, the final target
test accuracy over seeds (mean, std), the share of trained conv weights that differ from
their start after training, and the per-layer gradient/weight norm ratios of one batch
for fp32, int8 (integer units) and int8 + QAS. benchmarks/quant.py reuses this setting
(``build``, ``ratios``) to compare every training precision through ``odt.train``.

    python benchmarks/quant_core.py            # 3 seeds, 10 epochs: ~3-4 min on 2 cores
    python benchmarks/quant_core.py --quick    # 1 seed, 2 epochs: a smoke test
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
from odtkit.quant import fold_bn_, norm_ratios, qas_, round_after_step_, to_int8

MODEL, TASK = "mcunet-tiny", "digits-shift"
TRAIN = ("blocks.6.", "blocks.7.", "classifier.")  # the last two blocks and the head
LR = {"sgd-m": 0.05, "adam": 1e-3}
BATCH = 32
CALIBRATION = 256
VARIANTS = {  # label -> (graph, optimizer, qas, rounding)
    "fp32 sgd-m": ("fp32", "sgd-m", False, None),
    "fp32 adam": ("fp32", "adam", False, None),
    "int8 sgd-m (nearest)": ("int8", "sgd-m", False, "nearest"),
    "int8 sgd-m (stochastic)": ("int8", "sgd-m", False, "stochastic"),
    "int8 adam (nearest)": ("int8", "adam", False, "nearest"),
    "int8 adam (stochastic)": ("int8", "adam", False, "stochastic"),
    "int8 sgd-m + qas (nearest)": ("int8", "sgd-m", True, "nearest"),
    "int8 sgd-m + qas (stochastic)": ("int8", "sgd-m", True, "stochastic"),
}


def build(graph: str, task: Any, train: tuple[str, ...] = TRAIN) -> torch.nn.Module:
    """The model a variant trains, with only the ``train`` tensors trainable."""
    model = odt.models.create(MODEL, pretrained=True)
    if graph == "fp32":
        model = fold_bn_(model.eval())
    else:
        model = to_int8(model, task.x_train[:CALIBRATION], head="float")
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith(train))
    return model


def run_one(job: tuple[str, int, int]) -> dict[str, Any]:
    """One variant, one seed, on odtkit's training loop (round_after_step_ on its optimizer)."""
    label, seed, epochs = job
    torch.set_num_threads(1)
    task = odt.datasets.load(TASK)
    graph, optimizer, qas, rounding = VARIANTS[label]
    model = build(graph, task)
    if qas:
        qas_(model)
    config = odt.TrainConfig(epochs=epochs, batch_size=BATCH, lr=LR[optimizer],
                             optimizer=optimizer, seed=seed)
    loop = odt.training.Loop(model, task, config, label=label)
    if rounding is not None:
        round_after_step_(loop.opt, model, rounding=rounding, seed=seed)
    start = {n: p.detach().clone() for n, p in model.named_parameters()
             if p.requires_grad and n.endswith("weight") and not n.startswith("classifier")}
    torch.manual_seed(seed)
    started = time.perf_counter()
    history = loop.run()
    params = dict(model.named_parameters())
    moved = sum(int((params[n] != w).sum()) for n, w in start.items())
    return {"label": label, "seed": seed, "test_acc": history.test_acc[-1],
            "curve": history.test_acc, "weights_moved": moved / sum(w.numel() for w in start.values()),
            "train_s": time.perf_counter() - started}


def ratios(task: Any) -> dict[str, Any]:
    """Per-layer ||grad|| / ||weight|| of every layer on the first 32 training samples, in
    the units each graph stores: fp32, int8 (integer units), int8 + QAS."""
    x, y = task.x_train[:BATCH], task.y_train[:BATCH]
    fp32 = norm_ratios(build("fp32", task, train=("",)), x, y)
    int8 = build("int8", task, train=("",))
    plain = norm_ratios(int8, x, y)
    qas_(int8)
    scaled = norm_ratios(int8, x, y)
    return {path: {kind: {"fp32": fp32[path][kind], "int8": plain[path][kind],
                          "int8+qas": scaled[path][kind]} for kind in fp32[path]}
            for path in fp32}


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out = {}
    for label in VARIANTS:
        mine = sorted((r for r in runs if r["label"] == label), key=lambda r: r["seed"])
        accs = [r["test_acc"] for r in mine]
        out[label] = {"test_acc": accs, "mean": statistics.fmean(accs),
                      "std": statistics.pstdev(accs),
                      "conv_weights_moved": statistics.fmean(r["weights_moved"] for r in mine),
                      "curve_seed0": mine[0]["curve"],
                      "train_s": statistics.fmean(r["train_s"] for r in mine)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 seed, 2 epochs (smoke)")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per variant (3)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs per run (10)")
    parser.add_argument("--jobs", type=int, default=2, help="parallel processes (2)")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args()
    seeds = args.seeds or (1 if args.quick else 3)
    epochs = args.epochs or (2 if args.quick else 10)
    torch.set_num_threads(1)
    task = odt.datasets.load(TASK)
    started = time.perf_counter()
    before = {graph: odt.training.evaluate(build(graph, task), task.x_test, task.y_test)
              for graph in ("fp32", "int8")}
    jobs = [(label, seed, epochs) for label in VARIANTS for seed in range(seeds)]
    runs = run_parallel(run_one, jobs, args.jobs)
    result = {"model": MODEL, "task": TASK, "trained": list(TRAIN), "head": "float",
              "lr": LR, "batch": BATCH, "epochs": epochs, "seeds": seeds,
              "calibration_samples": CALIBRATION, "test_acc_before": before,
              "variants": summarize(runs), "norm_ratios": ratios(task),
              "wall_s": time.perf_counter() - started, "jobs": args.jobs}
    text = json.dumps(result, indent=1)
    if args.out is not None:
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
