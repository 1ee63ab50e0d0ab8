"""TrainConfig: every knob of a training run, validated once, frozen, and the fingerprint a
resumed run must match.

    cfg = odt.TrainConfig(epochs=3, lr=0.05, batch_size=32, seed=0)
    hist = odt.train(model, task, "bias-only", config=cfg)

``odt.train``, the simulated data-parallel workers, federated clients and DDP ranks all
build one, so a bad value is refused in the same words everywhere.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from .._checks import check_choice, check_positive_int, check_real, check_seed, lookup
from ..quant import PRECISIONS, ROUNDINGS
from .optim import OPTIMIZERS

__all__ = ["TrainConfig"]

# fields that change how a run is observed or saved, not the numbers it computes
_NOT_IN_FINGERPRINT = ("checkpoint_every", "eval_batch_size")


@dataclass(frozen=True)
class TrainConfig:
    """The knobs of one training run.

    ``batch_size`` is per worker where several workers share a global batch.
    ``max_steps`` caps the optimizer steps over all epochs (the cut epoch is recorded as it
    stands); ``checkpoint_every`` adds mid-epoch checkpoints every that many steps.
    ``drop_last`` skips an epoch's incomplete last batch. ``eval_batch_size`` only sets
    how many test samples are evaluated at once. ``precision``: one of
    ``odtkit.quant.PRECISIONS`` (None: the plan's, fp32 without a plan; the Loop runs
    None as fp32). ``qas``: quantization-aware scaling of an int8 graph's gradients
    (precision "int8" only); ``rounding``: how an int8 graph re-rounds after each step.
    """

    epochs: int = 1
    batch_size: int = 32
    lr: float = 0.05
    optimizer: str = "sgd-m"
    momentum: float = 0.9
    weight_decay: float = 0.0
    seed: int = 0
    drop_last: bool = False
    max_steps: int | None = None
    checkpoint_every: int | None = None
    eval_batch_size: int = 256
    precision: str | None = None
    qas: bool = False
    rounding: str = "nearest"

    def __post_init__(self) -> None:
        checked = {
            "epochs": check_positive_int("epochs", self.epochs),
            "batch_size": check_positive_int("batch_size", self.batch_size),
            "lr": check_real("lr", self.lr, low=0, low_open=True),
            "optimizer": check_choice("optimizer", self.optimizer, OPTIMIZERS),
            "momentum": check_real("momentum", self.momentum, low=0, high=1, high_open=True),
            "weight_decay": check_real("weight_decay", self.weight_decay, low=0),
            "seed": check_seed("seed", self.seed),
            "max_steps": check_positive_int("max_steps", self.max_steps, allow_none=True),
            "checkpoint_every": check_positive_int("checkpoint_every", self.checkpoint_every,
                                                   allow_none=True),
            "eval_batch_size": check_positive_int("eval_batch_size", self.eval_batch_size),
            "precision": (None if self.precision is None
                          else lookup("precision", self.precision, PRECISIONS)),
            "rounding": check_choice("rounding", self.rounding, ROUNDINGS),
        }
        if not isinstance(self.drop_last, bool):
            raise TypeError(f"drop_last must be True or False, got drop_last={self.drop_last!r}")
        if not isinstance(self.qas, bool):
            raise TypeError(f"qas must be True or False, got qas={self.qas!r}")
        if self.qas and checked["precision"] not in (None, "int8"):
            raise ValueError(f"qas=True scales the gradients of an int8 graph, but "
                             f"precision={checked['precision']!r}; use precision='int8' "
                             "(an Int8Model from odt.quant.to_int8) or qas=False")
        for name, value in checked.items():  # store the checked (plain Python) values
            object.__setattr__(self, name, value)

    def fingerprint(self) -> dict[str, Any]:
        """The fields a resumed run must match: all but checkpoint_every and eval_batch_size
        (precision None counts as the fp32 it runs as)."""
        out = {k: v for k, v in asdict(self).items() if k not in _NOT_IN_FINGERPRINT}
        out["precision"] = self.precision or "fp32"
        return out

    def total_steps(self, steps_per_epoch: int) -> int:
        """Optimizer steps of the whole run: epochs x steps_per_epoch, capped by max_steps."""
        total = self.epochs * steps_per_epoch
        return total if self.max_steps is None else min(total, self.max_steps)


FIELDS = tuple(f.name for f in fields(TrainConfig))
