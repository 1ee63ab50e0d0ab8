"""A tiny task, model and config shared by tests/test_training.py and its worker process.

Run as a script it trains with a checkpoint until it finishes (or is killed):
    python tests/_train_worker.py CHECKPOINT_PATH DELAY_S
DELAY_S slows every forward pass (a sleep, no arithmetic) so the test can kill it mid-run.
"""

from __future__ import annotations

import math
import sys
import time

import torch
from torch import nn

from odtkit.datasets import Task

N_TRAIN = 96
# 96 samples / batch 8 = 12 steps per epoch; checkpoints every 5 steps fall mid-epoch
CONFIG = dict(epochs=4, batch_size=8, lr=0.05, optimizer="sgd-m", seed=3, checkpoint_every=5)
STEPS_PER_EPOCH = math.ceil(N_TRAIN / CONFIG["batch_size"])


def make_task(n_train: int = N_TRAIN, n_test: int = 48, side: int = 4) -> Task:
    """Three classes told apart by which third of a 1 x side x side image is brightest."""
    gen = torch.Generator().manual_seed(123)
    n = n_train + n_test
    y = torch.randint(0, 3, (n,), generator=gen)
    x = 0.5 * torch.randn(n, 1, side, side, generator=gen)  # (N, 1, side, side)
    flat = x.view(n, -1)
    thirds = torch.arange(side * side) * 3 // (side * side)  # (side*side,) in {0, 1, 2}
    flat += (thirds.unsqueeze(0) == y.unsqueeze(1)).float()
    return Task(
        name="toy-thirds",
        description="toy task for the training tests",
        x_train=x[:n_train].contiguous(),
        y_train=y[:n_train].contiguous(),
        x_test=x[n_train:].contiguous(),
        y_test=y[n_train:].contiguous(),
        input_shape=(1, side, side),
        classes=("low", "middle", "high"),
    )


class Delay(nn.Module):
    """Identity that sleeps: makes a run slow enough to be killed at a chosen point."""

    def __init__(self, delay_s: float = 0.0) -> None:
        super().__init__()
        self.delay_s = delay_s

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.delay_s and self.training:
            time.sleep(self.delay_s)
        return x


def make_model(delay_s: float = 0.0, side: int = 4) -> nn.Sequential:
    """Same initial weights on every call: Linear + BatchNorm + Dropout (uses the torch RNG)."""
    torch.manual_seed(7)
    model = nn.Sequential(
        Delay(delay_s),
        nn.Flatten(),
        nn.Linear(side * side, 16),
        nn.BatchNorm1d(16),
        nn.ReLU(),
        nn.Dropout(0.25),
        nn.Linear(16, 3),
    )
    model.input_shape = (1, side, side)
    return model


def main(argv: list[str]) -> int:
    from odtkit.training import train

    torch.set_num_threads(1)
    path, delay_s = argv[1], float(argv[2])
    train(make_model(delay_s), make_task(), checkpoint=path, progress=False, **CONFIG)
    print("finished", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
