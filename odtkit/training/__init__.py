"""Training: the one loop every trainer in odtkit runs, its History, checkpoints, optimizers.

    hist = odt.train(model, task, odt.plan(model, "bias-only"), epochs=3, seed=0)

Same seed and config give the same numbers; a run killed and resumed from its checkpoint
ends bit-identical to an uninterrupted one.
"""

from .checkpoint import load_checkpoint
from .loop import History, check_task, evaluate, train
from .optim import OPTIMIZERS, check_optimizer, make_optimizer, state_copies

__all__ = ["History", "train", "evaluate", "check_task", "load_checkpoint", "OPTIMIZERS",
           "check_optimizer", "make_optimizer", "state_copies"]
