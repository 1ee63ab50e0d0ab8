"""DDP step time with odtkit's fp16 and PowerSGD hooks against PyTorch's own hooks.

4 gloo ranks on this machine train the same CNN (digits, 16 samples per rank) under five
hooks held side by side in one process group: none (DDP's fp32 all-reduce), PyTorch's
fp16_compress_hook, odtkit's fp16 hook, PyTorch's powerSGD_hook (rank 2, start 2,
min_compression_rate 2, error feedback, warm start) and odtkit's PowerSGD with the same
settings. Every round runs one step of each, in an order that rotates, after a barrier; a
step's time is the slowest rank's (forward, backward, hook, optimizer). The ratio of
medians odtkit / PyTorch per compression is the number to read (target: within 1.1x).

    python benchmarks/ddp.py            # writes benchmarks/results/ddp.json
    python benchmarks/ddp.py --quick    # a few rounds, prints only
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F

WORLD, BATCH, RANK, START, RATE = 4, 16, 2, 2, 2.0
OUT = Path(__file__).resolve().parent / "results" / "ddp.json"
PAIRS = {"fp16": ("pytorch fp16_compress_hook", "odtkit fp16"),
         "powersgd rank 2": ("pytorch powerSGD_hook", "odtkit powersgd")}
TARGET = 1.1


def cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 32, 3), nn.ReLU(), nn.Conv2d(32, 64, 3), nn.ReLU(),
                         nn.Flatten(), nn.Linear(64 * 4 * 4, 128), nn.ReLU(),
                         nn.Linear(128, 10))


def hooks(model: nn.Module) -> dict[str, Any]:
    """label -> (state, hook) or None (DDP's own fp32 all-reduce)."""
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
    from torch.distributed.algorithms.ddp_comm_hooks import powerSGD_hook as psgd

    from odtkit.distributed import comm_hook

    state = psgd.PowerSGDState(process_group=None, matrix_approximation_rank=RANK,
                               start_powerSGD_iter=START, min_compression_rate=RATE,
                               use_error_feedback=True, warm_start=True)
    return {
        "none (fp32 all-reduce)": None,
        "pytorch fp16_compress_hook": (None, default_hooks.fp16_compress_hook),
        "odtkit fp16": comm_hook("fp16", model=model),
        "pytorch powerSGD_hook": (state, psgd.powerSGD_hook),
        "odtkit powersgd": comm_hook("powersgd", model=model, error_feedback=True, rank=RANK,
                                     start_iter=START, min_compression_rate=RATE),
    }


def in_rank(rounds: int, warmup: int) -> dict[str, Any]:
    """Every hook's step times on this rank, round by round (warm-up rounds dropped)."""
    from torch.nn.parallel import DistributedDataParallel

    from odtkit.datasets import load

    rank = dist.get_rank()
    task = load("digits")
    runs = {}
    for label in hooks(cnn()):
        model = cnn()
        ddp = DistributedDataParallel(model)
        hook = hooks(model)[label]
        if hook is not None:
            ddp.register_comm_hook(*hook)
        runs[label] = (ddp, torch.optim.SGD(ddp.parameters(), lr=0.05, momentum=0.9), hook)
    labels = list(runs)
    times: dict[str, list[float]] = {label: [] for label in labels}
    per_round = len(task.y_train) // (WORLD * BATCH)
    for r in range(warmup + rounds):
        start = (r % per_round) * WORLD * BATCH + rank * BATCH
        x, y = task.x_train[start:start + BATCH], task.y_train[start:start + BATCH]
        for label in labels[r % len(labels):] + labels[:r % len(labels)]:
            ddp, opt, _ = runs[label]
            dist.barrier()
            began = time.perf_counter()
            opt.zero_grad()
            F.cross_entropy(ddp(x), y).backward()
            opt.step()
            if r >= warmup:
                times[label].append(time.perf_counter() - began)
    state = runs["odtkit powersgd"][2][0]
    return {"times": times, "odtkit_powersgd_wire_sent": state.wire_sent_bytes_per_round[-1],
            "odtkit_fp16_wire_sent": runs["odtkit fp16"][2][0].wire_sent_bytes_per_round[-1]}


def summarize(ranks: list[dict[str, Any]], rounds: int, warmup: int) -> dict[str, Any]:
    labels = list(ranks[0]["times"])
    slowest = {label: [max(r["times"][label][i] for r in ranks) for i in range(rounds)]
               for label in labels}
    median_ms = {label: 1e3 * statistics.median(v) for label, v in slowest.items()}
    q1_q3 = {label: [1e3 * q for q in statistics.quantiles(v, n=4)[::2]]
             for label, v in slowest.items()}
    ratios = {name: median_ms[ours] / median_ms[theirs] for name, (theirs, ours) in PAIRS.items()}
    params = sum(p.numel() for p in cnn().parameters())
    return {
        "what": "DDP step time (forward, backward, comm hook, SGD-m step), slowest of 4 gloo "
                "ranks, median over rounds; every hook runs once per round, order rotating",
        "world_size": WORLD, "batch_per_rank": BATCH, "model_params": params,
        "dense_fp32_gradient_bytes": 4 * params, "rounds": rounds, "warmup_rounds": warmup,
        "powersgd": {"rank": RANK, "start_iter": START, "min_compression_rate": RATE,
                     "error_feedback": True},
        "median_step_ms": median_ms, "quartiles_step_ms": q1_q3,
        "ratio_odtkit_over_pytorch": ratios, "target_ratio": TARGET,
        "passes": {name: ratio <= TARGET for name, ratio in ratios.items()},
        "odtkit_wire_sent_bytes_per_step": {"fp16": ranks[0]["odtkit_fp16_wire_sent"],
                                            "powersgd": ranks[0]["odtkit_powersgd_wire_sent"]},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "torch": torch.__version__,
                    "note": "4 ranks, one thread each, on a machine whose cores other jobs "
                            "share: absolute times are noisy, the side-by-side ratio is the "
                            "number to read"},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20 rounds; prints, writes nothing")
    parser.add_argument("--rounds", type=int, default=300, help="timed rounds (300)")
    args = parser.parse_args()
    rounds, warmup = (20, 3) if args.quick else (args.rounds, 10)
    from odtkit.distributed.ddp import spawn_local

    ranks = spawn_local(in_rank, WORLD, timeout_s=1800, pg_timeout_s=300, rounds=rounds,
                        warmup=warmup)
    result = summarize(ranks, rounds, warmup)
    print(json.dumps(result, indent=1))
    if not args.quick:
        OUT.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
