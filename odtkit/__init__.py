"""odtkit: a toolkit and lab book for on-device training.

The public API is re-exported here. Submodules load on first use, so
``import odtkit`` stays fast and a notebook pays only for what it touches.

    import odtkit as odt
    dev = odt.device("stm32f746")
    model = odt.models.create("mbv2-tiny", num_classes=10)
    task = odt.datasets.load("digits-shift")
    hist = odt.train(model, task, epochs=3, seed=0)
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

# public name -> subpackage or module that defines it
_EXPORTS: dict[str, str] = {
    # hardware catalogue
    "devices": "hardware",
    "device": "hardware",
    "links": "hardware",
    "link": "hardware",
    "DeviceProfile": "hardware",
    "LinkProfile": "hardware",
    "FitReport": "hardware",
    "load_profile": "hardware",
    "format_bytes": "units",
    # training
    "train": "training",
    "TrainConfig": "training",
    "TrainingDiverged": "training",
    "History": "training",
    "evaluate": "training",
    "load_checkpoint": "training",
    "make_optimizer": "training",
    "OPTIMIZERS": "training",
    # plans, memory and the lean engine
    "plan": "plans",
    "TrainPlan": "plans",
    "PRECISIONS": "plans",
    "precision_info": "quant",
    "estimate": "memory",
    "measure": "memory",
    "MemoryReport": "memory",
    "lean": "engine",
    # the lab book
    "smoke": "lab",
}

_SUBPACKAGES = (
    "hardware",
    "models",
    "datasets",
    "plans",
    "memory",
    "engine",
    "training",
    "compress",
    "quant",
    "sparse",
    "distributed",
    "lab",
    "viz",
    "widgets",
    "units",
    "cli",
)

# old flat modules -> where they live now (still reachable, with a DeprecationWarning)
_MOVED: dict[str, str] = {
    "optim": "training.optim",
    "checkpoint": "training.checkpoint",
    "federated": "distributed.federated",
    "ddp": "distributed.ddp",
    "exercises": "lab",
}

__all__ = sorted([*_EXPORTS, *_SUBPACKAGES, "__version__"])


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    if name in _SUBPACKAGES:
        return import_module(f".{name}", __name__)
    if name in _MOVED:
        import warnings

        warnings.warn(f"odtkit.{name} moved to odtkit.{_MOVED[name]}; import it from there",
                      DeprecationWarning, stacklevel=2)
        return import_module(f".{_MOVED[name]}", __name__)
    raise AttributeError(f"module 'odtkit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
