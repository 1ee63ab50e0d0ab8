"""Build the cached contribution table of the lab's transfer setting (data/sparse/).

mcunet-tiny, pretrained on the source domain of digits-shift (odtkit's shipped weights),
adapted on the shifted target domain: for every k, the biases of the last k layers; for
every conv and linear layer, its weights at channel ratios 1/8, 1/4, 1/2 and 1 (input
channels by largest weight magnitude). Each option is one 2-epoch ``odt.train`` run from
the pretrained weights (SGD-M, lr 0.05, batches of 32, seed 0, lean engine), and its
training memory the ``odt.estimate`` peak at batch 1. Deterministic: fixed seeds and one
thread. About two minutes on two cores.

    python data/build_contributions.py
"""

from __future__ import annotations

import argparse
import json
import time

import torch

import odtkit as odt
from odtkit.sparse import cached_path

MODEL, TASK = "mcunet-tiny", "digits-shift"
SETTINGS = {"epochs": 2, "lr": 0.05, "seed": 0, "ratios": (1 / 8, 1 / 4, 1 / 2, 1.0),
            "criterion": "magnitude-largest", "engine": "lean", "optimizer": "sgd-m",
            "precision": "fp32", "batch_size": 1, "train_batch_size": 32}


def build() -> dict:
    """Measure the table, save it where ``odt.sparse.contributions`` looks, and summarize."""
    torch.set_num_threads(1)
    start = time.perf_counter()
    model = odt.models.create(MODEL, pretrained=True)
    task = odt.datasets.load(TASK)
    table = odt.sparse.contributions(model, task, cache=False, **SETTINGS)
    path = table.save(cached_path(MODEL, TASK))
    best = max(table.weights, key=lambda c: c.gain)
    return {"path": f"data/sparse/{path.name}", "baseline_acc": table.baseline_acc,
            "bias_runs": len(table.biases), "weight_runs": len(table.weights),
            "best_weight_option": best.label, "best_weight_gain": best.gain,
            "seconds": round(time.perf_counter() - start, 1)}


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args(argv)
    print(json.dumps(build()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
