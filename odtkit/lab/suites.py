"""What lab 05 and the compression benchmark share: the task, the model and the suite."""

from __future__ import annotations

from typing import Any

from torch import nn

__all__ = ["LAB_TASK", "LAB_WIDTH", "SUITE", "lab_model"]

LAB_TASK = "digits"
LAB_WIDTH = 2.0  # mlp 64-256-128-10: 50,826 parameters, so 0.1% keeps ~55 entries

# The compressors compared in lab 05 and benchmarks/compress.py: label -> simulate keywords
# (default: SGD with momentum 0.9, lr 0.05). signSGD sends the mean-|g| scale too. Two need
# other steps: sign methods lr 0.02 (at 0.05 EF-signSGD oscillates), and random-k + EF
# plain SGD (its residual waits ~1/density rounds; heavy-ball momentum on those stale
# bursts diverges, at 10% density too).
SUITE: dict[str, dict[str, Any]] = {
    "dense fp32": {"compressor": "none"},
    "fp16": {"compressor": "fp16"},
    "bf16": {"compressor": "bf16"},
    "top-k 0.1% + EF": {"compressor": "topk", "density": 0.001, "error_feedback": True},
    "top-k 0.1%": {"compressor": "topk", "density": 0.001},
    "random-k 1% + EF": {"compressor": "randomk", "density": 0.01, "error_feedback": True,
                         "optimizer": "sgd", "lr": 0.1},
    "threshold + EF": {"compressor": "threshold", "threshold": 0.01, "error_feedback": True},
    "DGC 0.1%": {"compressor": "dgc", "density": 0.001, "optimizer": "sgd"},
    "QSGD 4 bit": {"compressor": "qsgd", "levels": 15},
    "TernGrad": {"compressor": "terngrad"},
    "signSGD": {"compressor": "signsgd", "scale": "mean", "lr": 0.02},
    "EF-signSGD": {"compressor": "ef-signsgd", "lr": 0.02},
    "PowerSGD r2 + EF": {"compressor": "powersgd", "rank": 2, "error_feedback": True},
}


def lab_model(task: Any, seed: int = 0) -> nn.Module:
    """The model of lab 05 and the benchmark: the zoo MLP at width 2 sized for ``task``."""
    from ..models import create

    return create("mlp", num_classes=task.num_classes, input_shape=task.input_shape,
                  width=LAB_WIDTH, seed=seed)
