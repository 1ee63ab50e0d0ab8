"""Contribution analysis: what each sparse-update option buys in accuracy and costs in memory.

    table = odt.sparse.contributions(model, task, epochs=2, seed=0)
    table.bias(3).gain, table.weight("blocks.7.block.2.0", 0.25).peak_bytes
    table.save("contributions.json"); odt.sparse.ContributionTable.load(path, task="digits-shift")

"On-Device Training Under 256KB Memory" (Lin et al., 2022) measures, by short fine-tuning
runs, the accuracy gain of updating (a) the biases of the last k layers and (b) one layer's
weights at a channel ratio, then searches the scheme whose summed gains are largest under a
memory budget (``odt.sparse.search``). Here each option is one ``odt.train`` run from the
model as given (a fresh copy each time, the same seed); the baseline is the model with no
update at all, so every gain is measured against the same start and the empty scheme
(plan "none", inference alone) is always a valid choice. A weights option trains that
layer's weights alone (channels by ``criterion``; no biases), a biases option the last k
biases alone. Gains are final test accuracies (``History.test_acc[-1]``) minus the
baseline's. Each option also carries ``odt.estimate`` of its own training step (peak and
frozen weights, at ``batch_size``, on ``engine``, with ``optimizer`` and ``precision``), the
numbers a search adds up as its guide.

The lab's table (mcunet-tiny on digits-shift) is cached in ``data/sparse/`` of a source
checkout (``odtkit.datasets.data_dir()``); ``data/build_contributions.py`` rebuilds it.
``contributions`` returns the cached table when its model weights and every setting match,
and computes otherwise.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._checks import check_choice, check_positive_int, check_real, check_seed
from ..datasets import data_dir
from ..memory import estimate
from ..models import example_input
from ..plans import TrainPlan
from ..plans import plan as make_plan
from ..training import evaluate, train
from ._contrib_table import Contribution, ContributionTable, TableMismatchError
from ._layers import check_ratio, neuron_layers
from .criteria import CRITERIA
from .scheme import plan

__all__ = ["contributions", "Contribution", "ContributionTable", "TableMismatchError",
           "model_name", "model_fingerprint", "cached_path", "RATIOS"]

RATIOS: tuple[float, ...] = (1 / 8, 1 / 4, 1 / 2, 1.0)  # the paper's channel ratios
ENGINES = ("pytorch", "lean")


def model_name(model: nn.Module) -> str:
    """The zoo name of ``model`` (``model.config["name"]``), else its class name."""
    config = getattr(model, "config", None)
    if isinstance(config, dict) and isinstance(config.get("name"), str):
        return config["name"]
    return type(model).__name__


def model_fingerprint(model: nn.Module) -> str:
    """First 16 hex digits of the SHA-256 of the state dict (names, shapes, bytes)."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()[:16]


def cached_path(model: str, task: str) -> Path:
    """Where the cached table of ``model`` on ``task`` lives: ``<data dir>/sparse/``."""
    return data_dir() / "sparse" / f"contributions-{model}-{task}.json"


def _version() -> str:
    from .. import __version__

    return __version__


def _settings(model: nn.Module, *, epochs: int, lr: float, seed: int, ratios: Sequence[float],
              layers: Sequence[str] | None, bias_ks: Sequence[int] | None, criterion: str,
              engine: str, optimizer: str, precision: str, batch_size: int,
              train_batch_size: int) -> dict[str, Any]:
    """The checked settings of a table, layers and bias k's resolved against ``model``."""
    check_positive_int("epochs", epochs)
    check_real("lr", lr, low=0.0, low_open=True)
    check_seed("seed", seed)
    check_choice("criterion", criterion, CRITERIA)
    check_choice("engine", engine, ENGINES)
    check_positive_int("batch_size", batch_size)
    check_positive_int("train_batch_size", train_batch_size)
    ratios = tuple(sorted({check_ratio("(contributions)", r) for r in ratios}))
    if not ratios:
        raise ValueError("ratios is empty; give channel ratios in (0, 1], e.g. (1/8, 1/4, 1/2, 1)")
    known = neuron_layers(model)
    layers = tuple(known if layers is None else layers)
    for name in layers:
        if name not in known:
            raise ValueError(f"layer {name!r} is not a conv or linear layer of "
                             f"{model_name(model)}; layers: {known[:6]}{' ...' * (len(known) > 6)}")
    n_bias = len(_all_bias(model))
    ks = tuple(range(1, n_bias + 1)) if bias_ks is None else tuple(sorted(set(bias_ks)))
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n_bias:
            raise ValueError(f"bias_ks must hold integers in [1, {n_bias}] (the model has "
                             f"{n_bias} layers with a bias), got {k!r}")
    return {"epochs": epochs, "lr": float(lr), "seed": seed, "ratios": ratios,
            "layers": layers, "bias_ks": ks, "criterion": criterion, "engine": engine,
            "optimizer": optimizer, "precision": precision, "batch_size": batch_size,
            "train_batch_size": train_batch_size}


def _all_bias(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules()
            if n and isinstance(getattr(m, "bias", None), nn.Parameter)]


def contributions(model: nn.Module, task: Any, *, epochs: int = 2, lr: float = 0.05,
                  seed: int = 0, ratios: Sequence[float] = RATIOS,
                  layers: Sequence[str] | None = None, bias_ks: Sequence[int] | None = None,
                  criterion: str = "magnitude-largest", engine: str = "lean",
                  optimizer: str = "sgd-m", precision: str = "fp32", batch_size: int = 1,
                  train_batch_size: int = 32, cache: bool = True) -> ContributionTable:
    """The ContributionTable of ``model`` on ``task``: one ``odt.train`` run (``epochs``,
    ``lr``, ``optimizer``, ``seed``, batches of ``train_batch_size``, on ``engine``) per
    option, and ``odt.estimate`` of each option's step at ``batch_size`` (the device's batch).

    ``layers``: conv/linear layers whose weights are analysed (default: all, in model
    order), each at every ratio of ``ratios``; ``bias_ks``: the k's of "biases of the last
    k layers" (default: 1 .. every layer with a bias). ``cache``: return the cached table
    (``cached_path``) when it was made for these weights and settings. The model is not
    changed; every run trains a copy.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    settings = _settings(model, epochs=epochs, lr=lr, seed=seed, ratios=ratios, layers=layers,
                         bias_ks=bias_ks, criterion=criterion, engine=engine,
                         optimizer=optimizer, precision=precision, batch_size=batch_size,
                         train_batch_size=train_batch_size)
    name, fingerprint, task_name = model_name(model), model_fingerprint(model), task.name
    path = cached_path(name, task_name)
    if cache and path.is_file():
        try:
            return ContributionTable.load(path, model=name, model_fingerprint=fingerprint,
                                          task=task_name, version=_version(), **settings)
        except (TableMismatchError, ValueError):
            pass  # made for other weights or settings: compute below
    return _compute(model, task, settings, name, fingerprint)


def option_plan(model: nn.Module, biases: int, weights: dict[str, float], settings: dict,
                ) -> TrainPlan:
    """The TrainPlan of a scheme under a table's settings (criterion, seed, precision)."""
    if not biases and not weights:
        return make_plan(model, "none", precision=settings["precision"])
    return plan(model, biases=biases, weights=weights, criterion=settings["criterion"],
                seed=settings["seed"], precision=settings["precision"])


def _compute(model: nn.Module, task: Any, settings: dict, name: str,
             fingerprint: str) -> ContributionTable:
    x = example_input(model, batch_size=settings["batch_size"])
    start = copy.deepcopy(model).eval()
    baseline = float(evaluate(start, task.x_test, task.y_test))

    def cost(biases: int, weights: dict[str, float]) -> tuple[int, int]:
        report = estimate(model, x, option_plan(model, biases, weights, settings),
                          optimizer=settings["optimizer"], engine=settings["engine"])
        return int(report.peak_bytes), int(report.frozen_weight_bytes)

    def run(biases: int, weights: dict[str, float]) -> float:
        twin = copy.deepcopy(model)
        history = train(twin, task, option_plan(twin, biases, weights, settings),
                        epochs=settings["epochs"], lr=settings["lr"],
                        optimizer=settings["optimizer"], batch_size=settings["train_batch_size"],
                        seed=settings["seed"], engine=settings["engine"], progress=False)
        return float(history.test_acc[-1])

    none_peak, none_frozen = cost(0, {})
    rows_b = []
    for k in settings["bias_ks"]:
        acc = run(k, {})
        peak, frozen = cost(k, {})
        rows_b.append(Contribution("biases", acc, acc - baseline, peak, frozen, k=k))
    rows_w = []
    for layer in settings["layers"]:
        for ratio in settings["ratios"]:
            acc = run(0, {layer: ratio})
            peak, frozen = cost(0, {layer: ratio})
            rows_w.append(Contribution("weights", acc, acc - baseline, peak, frozen,
                                       layer=layer, ratio=ratio))
    return ContributionTable(
        model=name, model_fingerprint=fingerprint, task=task.name, version=_version(),
        settings=tuple(settings.items()), baseline_acc=baseline, none_peak_bytes=none_peak,
        none_frozen_weight_bytes=none_frozen, bias_layers=tuple(_all_bias(model)),
        biases=tuple(rows_b), weights=tuple(rows_w),
        notes=("baseline: the model as given, no update; each gain: one run's final test "
               "accuracy minus the baseline; bytes: odt.estimate of that option alone",))
