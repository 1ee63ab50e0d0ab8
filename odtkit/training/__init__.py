"""Training: the one loop every trainer in odtkit runs, its config, History, checkpoints,
optimizers.

    hist = odt.train(model, task, "bias-only", epochs=3, seed=0)
    hist = odt.train(model, task, plan, config=odt.TrainConfig(epochs=3, lr=0.05))

Same seed and config give the same numbers; a run killed and resumed from its checkpoint
ends bit-identical to an uninterrupted one. ``Loop`` is the core that ``train``, the
simulated data-parallel workers, federated clients and DDP ranks all run.
"""

from .checkpoint import load_checkpoint
from .config import TrainConfig
from .core import Batch, Loop, LoopState, TrainingDiverged, batch_at, draw_order, steps_per_epoch
from .history import History, evaluate, model_device
from .loop import train
from .optim import OPTIMIZERS, check_optimizer, make_optimizer, state_copies
from .probe import check_model, check_task

__all__ = ["History", "train", "TrainConfig", "TrainingDiverged", "evaluate", "check_task",
           "check_model", "load_checkpoint", "OPTIMIZERS", "check_optimizer", "make_optimizer",
           "state_copies", "Loop", "LoopState", "Batch", "steps_per_epoch", "draw_order",
           "batch_at", "model_device"]
