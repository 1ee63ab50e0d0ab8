"""Training together: data-parallel workers with compressed gradients, federated rounds.

    hist = odt.distributed.simulate(model, task, workers=4, compressor="topk", density=0.001,
                                    error_feedback=True, epochs=30)
    fed = odt.distributed.federated.federated(model, task, clients=20, rounds=20)
    state, hook = odt.distributed.comm_hook("topk", model=model, density=0.01)   # real DDP

``simulate`` runs N workers in one process; ``hook`` is the same arithmetic as a DDP
communication hook on torch.distributed (gloo), ``ddp`` trains and launches ranks with it,
``federated`` runs FedAvg with a device and link time model. Both data-parallel paths
exchange with the collective the maths allows (``collectives``): all-reduce where payloads
sum (fp32, fp16/bf16, shared-seed random-k), PowerSGD's two all-reduces, all-gather
elsewhere; histories report payload bytes and the wire bytes each worker sends and receives.
Launch real workers with ``torchrun --nproc_per_node=2 -m odtkit.distributed``.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from ._common import average, dense_bytes, make_compressor
from .simulate import DistHistory, global_batches, simulate

# loaded on first use: torch.distributed and FedAvg are not needed by every caller
_LAZY = {
    "comm_hook": "hook", "compression_hook": "hook", "CompressionHookState": "hook",
    "exchange": "collectives", "Exchanged": "collectives",
    "train_ddp": "ddp", "spawn_local": "ddp", "WorkerLostError": "ddp", "free_port": "ddp",
    "main": "ddp",
    "FedHistory": "federated", "RoundTime": "federated", "partition": "federated",
    "round_time": "federated", "worker_round_time": "federated",
}
# names that lived here before the lab package existed
_MOVED = {"SUITE": "odtkit.lab", "lab_model": "odtkit.lab", "LAB_TASK": "odtkit.lab",
          "LAB_WIDTH": "odtkit.lab", "check_topk_ef": "odtkit.lab"}

__all__ = ["DistHistory", "simulate", "global_batches", "average", "dense_bytes",
           "make_compressor", "ddp", "hook", "federated", "collectives", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    if name in ("ddp", "hook", "federated", "collectives"):
        return import_module(f".{name}", __name__)
    if name in _MOVED:
        import warnings

        warnings.warn(f"odtkit.distributed.{name} moved to {_MOVED[name]}.{name}",
                      DeprecationWarning, stacklevel=2)
        return getattr(import_module(_MOVED[name]), name)
    raise AttributeError(f"module 'odtkit.distributed' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
