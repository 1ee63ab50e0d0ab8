"""``federated()`` as a real Flower run: odtkit's local training in a ClientApp, the
compression mod, CompressedFedAvg in a ServerApp, Flower's simulation engine (Ray).
Flower is imported inside the functions (this module imports without the extra)."""

from __future__ import annotations

import copy
import dataclasses
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .._checks import check_positive_int
from ..training import TrainConfig, evaluate
from ._common import dgc_workers
from ._flower_app import compression_mod, strategy_class
from .federated import FedHistory, _check_fleet, _local_train, partition

if TYPE_CHECKING:
    from flwr.app import ArrayRecord, Context, Message, MetricRecord
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid

# Ray on a small machine: one CPU for the one actor that runs every client in turn, no
# dashboard, the loopback address only.
RAY_BACKEND = {"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
               "init_args": {"num_cpus": 1, "num_gpus": 0, "include_dashboard": False,
                             "_node_ip_address": "127.0.0.1"}}


def client_app(model: nn.Module, task: Any, shards: Sequence[torch.Tensor], local: TrainConfig,
               *, seed: int = 0, mods: Sequence[Callable[..., Message]] = ()) -> ClientApp:
    """A ClientApp whose train step is ``federated()``'s: client k (node_config
    ``partition-id``) loads the global model, runs the training loop over ``shards[k]`` with
    ``local`` (its data order seeded as in ``federated()``) and replies with its model,
    ``num-examples`` (shard size) and ``train-samples`` (samples processed)."""
    from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp

    app = ClientApp(mods=list(mods))

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        k = int(context.node_config["partition-id"])
        r = int(msg.content["config"]["server-round"]) - 1
        work = copy.deepcopy(model)
        work.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        samples = _local_train(work, task, shards[k], local, seed=seed * 100_003 + r * 1009 + k,
                               label=f"client {k} in round {r + 1}")
        metrics = MetricRecord({"num-examples": len(shards[k]), "train-samples": samples})
        content = RecordDict({"arrays": ArrayRecord(torch_state_dict=work.state_dict()),
                              "metrics": metrics})
        return Message(content, reply_to=msg)

    return app


def run(model: nn.Module, task: Any, *, clients: int = 4, rounds: int = 3,
        local_epochs: int = 1, batch_size: int = 16, lr: float = 0.05, optimizer: str = "sgd",
        momentum: float = 0.9, weight_decay: float = 0.0, partition_scheme: str = "dirichlet",
        alpha: float = 0.5, shards_per_client: int = 2,
        devices: str | Sequence[str] = ("raspberry-pi-4",), link: str | Sequence[str] = "lte",
        compressor: str | Callable[[], Any] = "none", error_feedback: bool = False,
        dtype: str = "fp32", seed: int = 0, timeout_s: float = 600.0,
        backend_config: dict[str, Any] | None = None, ray_attempts: int = 3,
        **compressor_kwargs: Any) -> FedHistory:
    """``federated(model, task, fraction=1.0, ...)`` on Flower: every client in every round,
    each a virtual SuperNode of Flower's simulation engine. Same arguments, same seeds: the
    same final model (to float rounding), the same payload bytes and round times.
    ``backend_config`` replaces ``RAY_BACKEND`` (one CPU, loopback, no dashboard);
    ``timeout_s`` bounds the wait for the clients' replies in a round; Ray's start is tried
    up to ``ray_attempts`` times (on a busy machine its agents can miss their start-up
    deadline)."""
    from flwr.app import ArrayRecord, ConfigRecord, MetricRecord
    from flwr.serverapp import ServerApp
    from flwr.simulation import run_simulation

    local = TrainConfig(epochs=local_epochs, batch_size=batch_size, lr=lr, optimizer=optimizer,
                        momentum=momentum, weight_decay=weight_decay, seed=seed)
    _check_fleet(model, task, clients, rounds, 1.0, None)
    shards = partition(task.y_train, clients, scheme=partition_scheme, alpha=alpha,
                       shards_per_client=shards_per_client, seed=seed)
    compressor_kwargs = dgc_workers(compressor, compressor_kwargs, clients)
    strategy = strategy_class()(
        model=model, clients=clients, compressor=compressor, error_feedback=error_feedback,
        devices=devices, link=link, batch_size=batch_size, dtype=dtype, seed=seed,
        compressor_kwargs=compressor_kwargs, fraction_train=1.0, fraction_evaluate=0.0,
        min_train_nodes=clients, min_available_nodes=clients)
    mod = compression_mod(compressor, error_feedback=error_feedback, seed=seed,
                          **compressor_kwargs)
    glob = copy.deepcopy(model)
    result: dict[str, Any] = {}

    def test_accuracy(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        if server_round == 0:
            return None
        glob.load_state_dict(arrays.to_torch_state_dict())
        strategy.history.test_acc.append(evaluate(glob, task.x_test, task.y_test))
        return MetricRecord({"accuracy": strategy.history.test_acc[-1]})

    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        result["final"] = strategy.start(
            grid=grid, initial_arrays=ArrayRecord(torch_state_dict=model.state_dict()),
            num_rounds=rounds, timeout=timeout_s, train_config=ConfigRecord(),
            evaluate_fn=test_accuracy)

    config = copy.deepcopy(backend_config or RAY_BACKEND)
    _start_ray(config.get("init_args", {}), attempts=ray_attempts)
    run_simulation(server_app=server,
                   client_app=client_app(model, task, shards, local, seed=seed, mods=[mod]),
                   num_supernodes=clients, backend_config=config)
    hist = strategy.history
    missing = [r + 1 for r, chosen in enumerate(hist.chosen) if len(chosen) < clients]
    if "final" not in result or len(hist.chosen) < rounds or missing:
        raise RuntimeError(f"the Flower run did not finish: {len(hist.chosen)} of {rounds} "
                           f"rounds aggregated, rounds {missing} lack replies from some of the "
                           f"{clients} clients (see Flower's log above; raise timeout_s on a "
                           "slow machine)")
    return dataclasses.replace(hist, shard_sizes=tuple(len(s) for s in shards), model=glob)


def _start_ray(init_args: dict[str, Any], attempts: int) -> None:
    """Start Ray as Flower's backend would (it reuses a running Ray), retrying a start that
    timed out; actors see this process's import path."""
    import ray

    check_positive_int("ray_attempts", attempts)
    path = os.pathsep.join([*sys.path, *filter(None, [os.environ.get("PYTHONPATH")])])
    error: Exception | None = None
    for _ in range(attempts):
        if ray.is_initialized():
            return
        try:
            ray.init(runtime_env={"env_vars": {"PYTHONPATH": path}},
                     **{"include_dashboard": False, **init_args})
        except Exception as err:  # Ray raises a bare Exception when its start times out
            error = err
            ray.shutdown()
    if not ray.is_initialized():
        raise RuntimeError(f"Ray did not start in {attempts} attempts: {error}") from error
