"""Federated averaging (McMahan et al., AISTATS 2017) on a simulated fleet of devices.

    hist = federated(model, task, clients=20, fraction=0.25, rounds=30, partition="dirichlet",
                     alpha=0.5, devices=("stm32h743", "raspberry-pi-4"), link="ble",
                     compressor="topk", density=0.01, error_feedback=True, deadline_s=5.0)

Every round a seeded draw picks ``fraction`` of the clients; each downloads the global
model (fp32), trains it on its own non-IID shard for ``local_epochs``, and uploads its
update delta = local - global through its own compressor (own error-feedback residual).
The server adds the sample-weighted mean of the decoded deltas, streamed into one running
sum as they arrive (memory: one model plus the clients' compressor state, such as error
feedback residuals). DGC's warm-up counts rounds. Time: a client needs
download + compute (roofline of its local training on its device) + upload over its link;
a round lasts as long as its slowest chosen client, or ``deadline_s`` when stragglers
past the deadline are dropped (their updates are lost for that round).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from .._checks import check_int, check_positive_int, check_real, check_seed, choice_error
from ..training import Loop, TrainConfig, check_model, check_task, evaluate
from ._common import dense_bytes, dgc_workers, make_compressor, renamed_attribute, set_epoch

__all__ = ["FedHistory", "RoundTime", "RunningMean", "federated", "partition", "round_time",
           "worker_round_time", "training_macs", "training_bytes_moved", "PARTITIONS"]

PARTITIONS = ("iid", "dirichlet", "shards")


# ------------------------------------------------------------------------- time model

@dataclass(frozen=True)
class RoundTime:
    """One client's (or worker's) round: seconds of compute, upload and download."""

    compute_s: float
    upload_s: float
    download_s: float

    @property
    def comm_s(self) -> float:
        return self.upload_s + self.download_s

    @property
    def total_s(self) -> float:
        return self.compute_s + self.upload_s + self.download_s


def _forward_profile(model: nn.Module) -> tuple[int, int]:
    """(forward MACs, activation bytes) for one sample, from the model summary."""
    from ..models import example_input, summary

    rows = summary(model, example_input(model, batch_size=1)).rows
    acts = sum(4 * math.prod(r.output_shape) for r in rows if r.output_shape)
    return sum(r.macs for r in rows), acts


def training_macs(model: nn.Module, samples: int) -> int:
    """MACs to train every parameter on ``samples`` samples, counted as ``odt.estimate``
    counts them: forward plus ``odtkit.models.backward_macs`` per layer (every weight
    gradient; every input gradient but the first layer's, which is fed with data)."""
    from ..memory import estimate
    from ..models import example_input

    report = estimate(model, example_input(model, batch_size=1), "full", optimizer="sgd")
    return (report.forward_macs + report.backward_macs) * samples


def training_bytes_moved(model: nn.Module, samples: int, batch_size: int) -> int:
    """Coarse memory traffic of local training: per step the weights are read twice and
    the gradient written and read once (4 x parameter bytes); per sample every activation
    is written, read in backward and its gradient written (3 x activation bytes)."""
    return _bytes_moved(dense_bytes(model), _forward_profile(model)[1], samples, batch_size)


def _bytes_moved(param_bytes: int, act_bytes: int, samples: int, batch_size: int) -> int:
    return math.ceil(samples / batch_size) * 4 * param_bytes + samples * 3 * act_bytes


def round_time(*, device: Any, link: Any, macs: float, bytes_moved: float,
               upload_bytes: float, download_bytes: float, dtype: str = "fp32") -> RoundTime:
    """Compute from the device roofline, communication from the link profile.

    A device without a memory-bandwidth figure is treated as compute-bound (MACs / peak).
    """
    for name, value in (("macs", macs), ("bytes_moved", bytes_moved),
                        ("upload_bytes", upload_bytes), ("download_bytes", download_bytes)):
        check_real(name, value, low=0)
    from ..hardware import device as get_device
    from ..hardware import link as get_link

    dev, net = get_device(device), get_link(link)
    if dev.bandwidth_bytes_per_s is None:
        compute = macs / dev.peak(dtype)
    else:
        compute = dev.roofline_s(macs, bytes_moved, dtype)
    return RoundTime(compute, net.transfer_s(upload_bytes), net.transfer_s(download_bytes))


def worker_round_time(history: Any, model: nn.Module, *, device: Any, link: Any,
                      batch_size: int = 16, dtype: str = "fp32") -> RoundTime:
    """Mean round of one simulated data-parallel worker (a ``DistHistory``): its batch's
    forward and backward on ``device``; what it sends and receives on the wire for the
    exchange used (all-reduce or all-gather; payloads alone for a history without wire
    bytes) over ``link``."""
    rounds = len(history.up_bytes_per_round)
    if rounds == 0:
        raise ValueError("the history has no rounds; run simulate first")
    up = sum(history.up_bytes_per_round) / rounds
    down = sum(history.total_bytes_per_round) / rounds - up
    if getattr(history, "wire_sent_bytes_per_round", None):
        up = sum(history.wire_sent_bytes_per_round) / rounds
        down = sum(history.wire_recv_bytes_per_round) / rounds
    return round_time(device=device, link=link, macs=training_macs(model, batch_size),
                      bytes_moved=training_bytes_moved(model, batch_size, batch_size),
                      upload_bytes=up, download_bytes=down, dtype=dtype)


# ------------------------------------------------------------------------- partitions

def partition(labels: torch.Tensor, clients: int, *, scheme: str = "dirichlet",
              alpha: float = 0.5, shards_per_client: int = 2, min_samples: int = 2,
              seed: int = 0) -> list[torch.Tensor]:
    """Split sample indices over ``clients``: 'iid', 'dirichlet' (per class, shares drawn
    from Dir(alpha); small alpha = strong label skew) or 'shards' (sort by label, cut into
    clients x shards_per_client shards, deal them out: McMahan et al.'s pathological case).
    Every client gets at least ``min_samples`` samples."""
    if scheme not in PARTITIONS:
        raise choice_error("partition", scheme, PARTITIONS)
    check_positive_int("clients", clients)
    check_int("min_samples", min_samples, low=1)
    check_seed("seed", seed)
    y = labels.numpy()
    n = len(y)
    if clients * min_samples > n:
        raise ValueError(f"cannot give {clients} clients {min_samples} samples each from {n}; "
                         "use fewer clients")
    rng = np.random.default_rng(seed)
    if scheme == "iid":
        parts = np.array_split(rng.permutation(n), clients)
    elif scheme == "shards":
        if shards_per_client < 1 or clients * shards_per_client * min_samples > n:
            raise ValueError(f"shards_per_client={shards_per_client} gives shards too small "
                             f"for {n} samples and {clients} clients")
        order = np.argsort(y, kind="stable")
        shards = np.array_split(order, clients * shards_per_client)
        deal = rng.permutation(len(shards)).reshape(clients, shards_per_client)
        parts = [np.concatenate([shards[s] for s in row]) for row in deal]
    else:
        check_real("alpha", alpha, low=0, low_open=True)  # e.g. 0.5; larger is closer to IID
        for _ in range(1000):
            buckets: list[list[int]] = [[] for _ in range(clients)]
            for c in np.unique(y):
                idx = rng.permutation(np.flatnonzero(y == c))
                cuts = (np.cumsum(rng.dirichlet(np.full(clients, alpha)))[:-1] * len(idx))
                for k, piece in enumerate(np.split(idx, cuts.astype(int))):
                    buckets[k].extend(piece.tolist())
            if min(len(b) for b in buckets) >= min_samples:
                break
        else:
            raise ValueError(f"Dirichlet(alpha={alpha}) left a client with fewer than "
                             f"{min_samples} samples in 1000 draws; raise alpha or use "
                             "fewer clients")
        parts = [np.array(b) for b in buckets]
    return [torch.as_tensor(np.sort(p), dtype=torch.int64) for p in parts]


# ------------------------------------------------------------------------- FedAvg

# old attribute -> (new attribute, how to get the old value from the new one)
_RENAMED = {"bytes_up": ("up_bytes_per_round", list), "bytes_down": ("down_bytes_per_round", list),
            "time_s": ("time_s_per_round", list), "compute_s": ("compute_s_per_round", list),
            "comm_s": ("comm_s_per_round", list)}
_PER_ROUND = ("test_acc", *(new for new, _ in _RENAMED.values()))


@dataclass(frozen=True, repr=False)
class FedHistory:
    """Per round: test accuracy of the global model, bytes, the critical client's time."""

    test_acc: list[float] = field(default_factory=list)
    up_bytes_per_round: list[int] = field(default_factory=list)  # payloads the server got
    down_bytes_per_round: list[int] = field(default_factory=list)  # global model to clients
    time_s_per_round: list[float] = field(default_factory=list)  # round duration
    compute_s_per_round: list[float] = field(default_factory=list)  # of the critical client
    comm_s_per_round: list[float] = field(default_factory=list)  # its upload + download
    chosen: list[tuple[int, ...]] = field(default_factory=list)
    dropped: list[tuple[int, ...]] = field(default_factory=list)
    devices: tuple[str, ...] = ()  # per client
    links: tuple[str, ...] = ()  # per client
    shard_sizes: tuple[int, ...] = ()
    model: nn.Module | None = field(default=None, compare=False)  # final global model

    def __getattr__(self, name: str) -> Any:  # old names: deprecated, they warn
        return renamed_attribute(self, name, _RENAMED)

    @property
    def rounds(self) -> int:
        return len(self.test_acc)

    @property
    def total_time_s(self) -> float:
        return float(sum(self.time_s_per_round))

    @property
    def total_bytes(self) -> int:
        return int(sum(self.up_bytes_per_round) + sum(self.down_bytes_per_round))

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: list(getattr(self, k)) for k in _PER_ROUND}
        out.update(chosen=[list(c) for c in self.chosen], dropped=[list(d) for d in self.dropped],
                   devices=list(self.devices), links=list(self.links),
                   shard_sizes=list(self.shard_sizes))
        return out

    def __repr__(self) -> str:
        if not self.rounds:
            return "FedHistory(0 rounds)"
        lost = sum(len(d) for d in self.dropped)
        return (f"FedHistory({self.rounds} rounds, final test_acc={self.test_acc[-1]:.3f}, "
                f"{self.total_time_s:.1f} s, {self.total_bytes / 1e6:.2f} MB, "
                f"{lost} updates dropped)")


def _assign(names: str | Sequence[str], clients: int, rng: np.random.Generator,
            what: str) -> tuple[str, ...]:
    pool = [names] if isinstance(names, str) else list(names)
    if not pool:
        raise ValueError(f"give at least one {what} name")
    return tuple(pool[int(i)] for i in rng.integers(0, len(pool), size=clients))


def _check_fit(model: nn.Module, device: str, batch_size: int) -> None:
    """Weights + gradients + activations of a batch must fit the device's RAM."""
    from ..hardware import device as get_device

    need = 2 * dense_bytes(model) + batch_size * _forward_profile(model)[1]
    report = get_device(device).fit(int(need))
    if not report.fits:
        raise ValueError(f"local training does not fit client device {device!r}: "
                         f"{report.verdict}. Use a smaller model or batch, or other devices")


def federated(model: nn.Module, task: Any, *, clients: int = 20, rounds: int = 20,
              fraction: float = 0.25, local_epochs: int = 1, batch_size: int = 16,
              lr: float = 0.05, optimizer: str = "sgd", momentum: float = 0.9,
              weight_decay: float = 0.0, partition_scheme: str = "dirichlet",
              alpha: float = 0.5, shards_per_client: int = 2,
              devices: str | Sequence[str] = ("raspberry-pi-4",),
              link: str | Sequence[str] = "lte", compressor: str = "none",
              error_feedback: bool = False, deadline_s: float | None = None,
              dtype: str = "fp32", seed: int = 0, **compressor_kwargs: Any) -> FedHistory:
    """Run FedAvg on a copy of ``model``; devices and links are drawn per client (seeded).

    Every client runs the training loop of ``odtkit.training`` for ``local_epochs`` over
    its shard (batch_size, lr, optimizer, momentum, weight_decay as in ``odt.train``).
    ``deadline_s``: drop chosen clients whose download + compute + upload exceeds it.
    Compressor keywords (density=, rank=, ...) go to ``odt.compress.get``.
    """
    local = TrainConfig(epochs=local_epochs, batch_size=batch_size, lr=lr, optimizer=optimizer,
                        momentum=momentum, weight_decay=weight_decay, seed=seed)
    _check_fleet(model, task, clients, rounds, fraction, deadline_s)
    rng = np.random.default_rng(seed)
    shards = partition(task.y_train, clients, scheme=partition_scheme, alpha=alpha,
                       shards_per_client=shards_per_client, seed=seed)
    client_devices = _assign(devices, clients, rng, "device")
    client_links = _assign(link, clients, rng, "link")
    glob = copy.deepcopy(model)
    for dev in sorted(set(client_devices)):
        _check_fit(glob, dev, batch_size)
    per_round = max(1, round(fraction * clients))
    compressor_kwargs = dgc_workers(compressor, compressor_kwargs, per_round)  # DGC's clip
    codecs = [make_compressor(compressor, error_feedback=error_feedback, seed=seed + k,
                              **compressor_kwargs) for k in range(clients)]
    hist = FedHistory(devices=client_devices, links=client_links,
                      shard_sizes=tuple(len(s) for s in shards), model=glob)
    model_bytes = dense_bytes(glob)
    step_macs, act_bytes = training_macs(glob, 1), _forward_profile(glob)[1]
    work = copy.deepcopy(glob)
    for r in range(rounds):
        chosen = tuple(sorted(int(k) for k in rng.choice(clients, per_round, replace=False)))
        total, times, dropped, sent_bytes = RunningMean(), [], [], 0
        for k in chosen:
            work.load_state_dict(glob.state_dict())
            samples = _local_train(work, task, shards[k], local,
                                   seed=seed * 100_003 + r * 1009 + k,
                                   label=f"client {k} in round {r + 1}")
            set_epoch(codecs[k], r)  # DGC's warm-up counts rounds
            decoded, sent = _upload(codecs[k], work, glob)
            t = round_time(device=client_devices[k], link=client_links[k],
                           macs=step_macs * samples,
                           bytes_moved=_bytes_moved(model_bytes, act_bytes, samples, batch_size),
                           upload_bytes=sent, download_bytes=model_bytes, dtype=dtype)
            if deadline_s is not None and t.total_s > deadline_s:
                dropped.append(k)
                continue
            decoded.update(_float_buffers(work))  # BN statistics travel as they are
            total.add(decoded, len(shards[k]))
            sent_bytes += sent
            times.append(t)
        _apply_mean(glob, total)
        slowest = max(times, key=lambda t: t.total_s) if times else RoundTime(0.0, 0.0, 0.0)
        hist.test_acc.append(evaluate(glob, task.x_test, task.y_test))
        hist.up_bytes_per_round.append(int(sent_bytes))
        hist.down_bytes_per_round.append(model_bytes * len(chosen))
        hist.time_s_per_round.append(deadline_s if dropped else slowest.total_s)
        hist.compute_s_per_round.append(slowest.compute_s)
        hist.comm_s_per_round.append(slowest.comm_s)
        hist.chosen.append(chosen)
        hist.dropped.append(tuple(dropped))
    return hist


def _check_fleet(model: nn.Module, task: Any, clients: int, rounds: int, fraction: float,
                 deadline_s: float | None) -> None:
    check_positive_int("clients", clients)
    check_positive_int("rounds", rounds)
    check_real("fraction", fraction, low=0, high=1, low_open=True)
    check_real("deadline_s", deadline_s, low=0, low_open=True, allow_none=True)
    check_task(task)
    check_model(model, task)


def _upload(codec: Any, local: nn.Module, glob: nn.Module) -> tuple[dict[str, torch.Tensor], int]:
    """The client's update (local - global) through its compressor: (decoded, bytes sent)."""
    sent, decoded = 0, {}
    for (name, p_local), p_glob in zip(local.named_parameters(), glob.parameters(), strict=True):
        payload, ctx = codec.compress(p_local.detach() - p_glob.detach(), name)
        sent += codec.nbytes(payload)
        decoded[name] = codec.decompress(payload, ctx)
    return decoded, sent


def _float_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's floating buffers (BatchNorm statistics): they are averaged as values."""
    return {n: b.detach() for n, b in model.named_buffers() if b.is_floating_point()}


def _local_train(model: nn.Module, task: Any, shard: torch.Tensor, config: TrainConfig,
                 seed: int, label: str) -> int:
    """The training loop's local epochs over the client's shard (its own data order from
    ``seed``; no test evaluation); returns the samples processed."""
    model.train()
    loop = Loop(model, task, dataclasses.replace(config, seed=seed), indices=shard,
                evaluate=False, label=label)
    return loop.run().samples[-1]


class RunningMean:
    """A weighted mean of named tensors, streamed: one float64 running sum per name (and
    the sum of the weights), so aggregating N updates holds one model, not N."""

    def __init__(self) -> None:
        self.weight = 0.0
        self.count = 0
        self.sums: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def add(self, tensors: dict[str, torch.Tensor], weight: float) -> None:
        """sums[name] += weight * tensors[name] for every name (the same names each time)."""
        check_real("weight", weight, low=0, low_open=True)
        if self.sums and set(tensors) != set(self.sums):
            raise ValueError(f"an update with tensors {sorted(tensors)} does not match the "
                             f"earlier ones ({sorted(self.sums)})")
        for name, t in tensors.items():
            if name in self.sums:
                self.sums[name].add_(t.detach(), alpha=weight)
            else:
                self.sums[name] = t.detach().double() * weight
        self.weight += float(weight)
        self.count += 1

    def mean(self, name: str) -> torch.Tensor:
        """sum_k w_k x_k / sum_k w_k for ``name`` (float64)."""
        return self.sums[name] / self.weight


@torch.no_grad()
def _apply_mean(glob: nn.Module, total: RunningMean) -> None:
    """global += sum_k (n_k / n) delta_k over the clients that made the deadline; float
    buffers (BatchNorm statistics) become the same weighted mean of the clients' values."""
    if not total.count:
        return
    for name, p in glob.named_parameters():
        p.add_(total.mean(name).to(p.dtype))
    for name, b in _float_buffers(glob).items():
        b.copy_(total.mean(name))
