"""A bridge to Flower (``flwr``): odtkit's compressors and time model in a Flower run.

Flower is an optional extra (``pip install "odtkit[flower]"``); odtkit works without it,
and the names below load Flower on first use.

    from odtkit.distributed import flower
    app = ClientApp(mods=[flower.compression_mod("topk", density=0.01, error_feedback=True)])
    strategy = flower.CompressedFedAvg(model=model, clients=10, compressor="topk",
                                       error_feedback=True, compressor_kwargs={"density": 0.01},
                                       devices=("raspberry-pi-4",), link="lte")
    hist = flower.run(model, task, clients=4, rounds=3, compressor="topk", density=0.01)

- ``compression_mod``: a client-side Flower mod. After the ClientApp has trained, the
  reply's arrays (the local model) become the update local - global, and every floating
  array but BatchNorm statistics goes through the client's odtkit compressor. Each payload
  tensor travels as one Flower ``Array`` of its raw bytes (dtype and shape in the Array's
  own fields; nothing is pickled); the receiver's context (per-tensor step, config-derived
  meta) travels in the ConfigRecord ``"odtkit"``. The compressor's state (error-feedback
  residuals, DGC's velocity and accumulation, step counters) stays in the client's
  ``Context.state`` between rounds. Client k (``node_config["partition-id"]``) gets seed
  ``seed + k`` and DGC's warm-up counts server rounds, as in ``federated()``.
- ``CompressedFedAvg``: Flower's FedAvg that decodes those replies, streams the
  sample-weighted mean of the updates into the global model (as ``federated()`` does) and
  keeps a ``FedHistory``: payload bytes received per round and the round time of the
  slowest client on its device and link profile (``round_time``).
- ``run``: ``federated(..., fraction=1.0)`` as a real Flower run on Flower's simulation
  engine (Ray, on 127.0.0.1), one virtual SuperNode per client; returns a ``FedHistory``.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

EXTRA = 'pip install "odtkit[flower]"'

# name -> private module that holds it (Flower is imported on use)
_LAZY = {"compression_mod": "_flower_app", "CompressedFedAvg": "_flower_app",
         "encode_update": "_flower_app", "decode_update": "_flower_app",
         "is_norm_statistic": "_flower_app", "UPDATE_KEY": "_flower_app",
         "client_app": "_flower_run", "run": "_flower_run"}

__all__ = ["EXTRA", "require_flower", *_LAZY]


def require_flower() -> Any:
    """The ``flwr`` package, or an ImportError that says how to install the extra."""
    try:
        return import_module("flwr")
    except ImportError as err:
        raise ImportError(f"odtkit's Flower bridge needs Flower (flwr), which is not "
                          f"installed; install the extra: {EXTRA}") from err


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        require_flower()
        module = import_module(f".{_LAZY[name]}", __package__)
        return module.strategy_class() if name == "CompressedFedAvg" else getattr(module, name)
    raise AttributeError(f"module 'odtkit.distributed.flower' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
