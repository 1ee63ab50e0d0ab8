"""The Flower side of the bridge: the update's record layout, the client mod, the strategy.

Reached through ``odtkit.distributed.flower``, which checks that Flower is installed; this
module imports Flower only inside its functions, so that it imports without the extra.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from .._checks import check_positive_int
from ..compress import Ctx, payload_from_bytes, payload_to_bytes
from ._common import dense_bytes, make_compressor, set_epoch
from .federated import (
    FedHistory,
    RoundTime,
    RunningMean,
    _assign,
    _bytes_moved,
    _check_fit,
    _forward_profile,
    round_time,
    training_macs,
)

if TYPE_CHECKING:
    from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord

UPDATE_KEY = "odtkit"  # the reply's ConfigRecord with the receiver's contexts
STATE_KEY = "odtkit.compressor"  # the client's Context.state entry with its compressor's state
STYPE = "odtkit.raw"  # an Array whose data are a payload tensor's raw bytes
_DTYPES = {str(d).removeprefix("torch."): d for d in (
    torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.uint8, torch.int8,
    torch.int16, torch.int32, torch.int64)}


def is_norm_statistic(key: str) -> bool:
    """BatchNorm's running statistics and counter: they travel as values, uncompressed."""
    return key.endswith(("running_mean", "running_var", "num_batches_tracked"))


# ------------------------------------------------------------------------- the record

def encode_update(codec: Any, local: Mapping[str, torch.Tensor], glob: Mapping[str, torch.Tensor],
                  *, raw: Callable[[str], bool] = is_norm_statistic
                  ) -> tuple[ArrayRecord, ConfigRecord, int]:
    """(arrays, contexts, payload bytes): each floating array of ``local`` not ``raw`` goes
    as its update ``local - glob`` through ``codec``; payload tensor i of array ``key`` is
    the Array ``key|i``; the others travel as they are."""
    from flwr.app import Array, ArrayRecord, ConfigRecord

    arrays: dict[str, Array] = {}
    contexts: dict[str, Any] = {}
    sent = 0
    for key, value in local.items():
        if not value.is_floating_point() or raw(key):
            arrays[key] = Array(value.detach().cpu().numpy())
            continue
        payload, ctx = codec.compress(value.detach() - glob[key].detach(), key)
        sent += codec.nbytes(payload)
        contexts[f"{key}|step"], contexts[f"{key}|parts"] = ctx.step, len(payload)
        for name, meta in ctx.meta.items():
            if not isinstance(meta, (bool, int, float, str)):
                raise TypeError(f"compressor {codec.kind!r} put {name}={meta!r} of type "
                                f"{type(meta).__name__} in the context of {key!r}; a Flower "
                                "ConfigRecord carries only bool, int, float or str")
            contexts[f"{key}|meta|{name}"] = meta
        for i, t in enumerate(payload):
            arrays[f"{key}|{i}"] = Array(dtype=str(t.dtype).removeprefix("torch."),
                                         shape=tuple(int(s) for s in t.shape), stype=STYPE,
                                         data=payload_to_bytes((t,)))
    return ArrayRecord(array_dict=arrays), ConfigRecord(contexts), sent


def _tensor(array: Array, key: str) -> torch.Tensor:
    if array.stype != STYPE or array.dtype not in _DTYPES:
        raise ValueError(f"array {key!r} is not an odtkit payload tensor (stype "
                         f"{array.stype!r}, dtype {array.dtype!r}; expected stype {STYPE!r} "
                         f"and one of {sorted(_DTYPES)})")
    like = torch.empty(tuple(array.shape), dtype=_DTYPES[array.dtype])
    need = like.numel() * like.element_size()
    if len(array.data) != need:
        raise ValueError(f"array {key!r} has {len(array.data)} bytes; its dtype {array.dtype} "
                         f"and shape {tuple(array.shape)} need {need}")
    return payload_from_bytes(array.data, (like,))[0]


def decode_update(codec: Any, arrays: ArrayRecord, contexts: ConfigRecord,
                  glob: Mapping[str, torch.Tensor]
                  ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], int]:
    """(decoded updates, arrays sent as they are, payload bytes received) of one reply, for
    the tensors of ``glob`` (the model the server sent)."""
    updates, values, received = {}, {}, 0
    for key, ref in glob.items():
        if f"{key}|step" not in contexts:
            if key in arrays:
                values[key] = torch.from_numpy(arrays[key].numpy())
            continue
        parts = [arrays[f"{key}|{i}"] for i in range(int(contexts[f"{key}|parts"]))]
        received += sum(len(a.data) for a in parts)
        meta = {k.split("|", 2)[2]: v for k, v in contexts.items()
                if k.startswith(f"{key}|meta|")}
        ctx = Ctx(name=key, shape=tuple(ref.shape), dtype=ref.dtype,
                  step=int(contexts[f"{key}|step"]), meta=meta)
        updates[key] = codec.decompress(tuple(_tensor(a, key) for a in parts), ctx)
    return updates, values, received


# ------------------------------------------------------------------------- client mod

def compression_mod(compressor: str | Callable[[], Any] = "none", *,
                    error_feedback: bool = False, seed: int = 0, arrays_key: str = "arrays",
                    raw: Callable[[str], bool] = is_norm_statistic,
                    **compressor_kwargs: Any) -> Callable[[Message, Context, Any], Message]:
    """A Flower mod that compresses the update a ClientApp's train reply uploads.

    Compressor name and keywords as ``odt.compress.get`` takes them (checked here, at once).
    """
    from flwr.app import ConfigRecord

    make_compressor(compressor, error_feedback=error_feedback, seed=seed, **compressor_kwargs)

    def mod(msg: Message, context: Context, call_next: Any) -> Message:
        reply = call_next(msg, context)
        if msg.metadata.message_type != "train" or reply.has_error():
            return reply
        k = int(context.node_config.get("partition-id", 0))
        codec = make_compressor(compressor, error_feedback=error_feedback, seed=seed + k,
                                **compressor_kwargs)
        if STATE_KEY in context.state:
            saved = io.BytesIO(context.state[STATE_KEY]["state"])
            codec.load_state_dict(torch.load(saved, weights_only=True))
        config = msg.content.config_records.get("config", ConfigRecord())
        set_epoch(codec, int(config.get("server-round", 1)) - 1)  # DGC's warm-up
        glob = msg.content[arrays_key].to_torch_state_dict()
        local = reply.content[arrays_key].to_torch_state_dict()
        arrays, contexts, _ = encode_update(codec, local, glob, raw=raw)
        contexts["partition-id"] = k
        reply.content[arrays_key] = arrays
        reply.content[UPDATE_KEY] = contexts
        state = io.BytesIO()
        torch.save(codec.state_dict(), state)  # the client's own state; loaded weights_only
        context.state[STATE_KEY] = ConfigRecord({"state": state.getvalue()})
        return reply

    return mod


# ------------------------------------------------------------------------- strategy

class _CompressedAveraging:
    """FedAvg over odtkit-compressed updates, with odtkit's device and link time model.
    (Mixed into Flower's FedAvg by ``strategy_class``.)

    ``model``: the architecture (for bytes and training MACs). Devices and links are drawn
    per client from ``devices`` and ``link`` with ``seed`` as ``federated()`` draws them;
    ``clients`` is how many there are (partition ids 0..clients-1). Before
    ``aggregate_train`` the strategy needs the global arrays it sent: ``configure_train``
    keeps them in ``global_arrays``. Other keywords go to Flower's FedAvg.
    """

    def __init__(self, *, model: nn.Module, clients: int,
                 compressor: str | Callable[[], Any] = "none", error_feedback: bool = False,
                 devices: str | Sequence[str] = ("raspberry-pi-4",),
                 link: str | Sequence[str] = "lte", batch_size: int = 16, dtype: str = "fp32",
                 seed: int = 0, compressor_kwargs: Mapping[str, Any] | None = None,
                 **fedavg_kwargs: Any) -> None:
        super().__init__(**fedavg_kwargs)
        check_positive_int("clients", clients)
        check_positive_int("batch_size", batch_size)
        self.decoder = make_compressor(compressor, error_feedback=error_feedback, seed=seed,
                                       **dict(compressor_kwargs or {}))
        rng = np.random.default_rng(seed)
        client_devices = _assign(devices, clients, rng, "device")
        client_links = _assign(link, clients, rng, "link")
        for dev in sorted(set(client_devices)):
            _check_fit(model, dev, batch_size)
        self.history = FedHistory(devices=client_devices, links=client_links)
        self.batch_size, self.dtype = batch_size, dtype
        self.model_bytes = dense_bytes(model)
        self.step_macs, self.act_bytes = training_macs(model, 1), _forward_profile(model)[1]
        self.global_arrays: dict[str, torch.Tensor] = {}

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Any) -> Iterable[Message]:
        self.global_arrays = arrays.to_torch_state_dict()
        messages = list(super().configure_train(server_round, arrays, config, grid))
        self.history.down_bytes_per_round.append(self.model_bytes * len(messages))
        return messages

    def client_time(self, client: int, samples: int, upload_bytes: int) -> RoundTime:
        """One client's round on its device and link (``round_time``)."""
        if not 0 <= client < len(self.history.devices):
            raise ValueError(f"a reply comes from partition-id {client}, but the strategy was "
                             f"made for clients={len(self.history.devices)} (ids 0.."
                             f"{len(self.history.devices) - 1}); pass the number of clients")
        return round_time(device=self.history.devices[client], link=self.history.links[client],
                          macs=self.step_macs * samples,
                          bytes_moved=_bytes_moved(self.model_bytes, self.act_bytes, samples,
                                                   self.batch_size),
                          upload_bytes=upload_bytes, download_bytes=self.model_bytes,
                          dtype=self.dtype)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        from flwr.app import ArrayRecord

        valid, _ = self._check_and_log_replies(replies, is_train=True)
        total, times, chosen, received = RunningMean(), [], [], 0
        deltas: set[str] = set()
        for msg in valid:
            content = msg.content
            metrics = next(iter(content.metric_records.values()))
            updates, values, nbytes = decode_update(self.decoder, content[self.arrayrecord_key],
                                                    content[UPDATE_KEY], self.global_arrays)
            total.add({**updates, **values}, metrics[self.weighted_by_key])
            deltas |= set(updates)
            client = int(content[UPDATE_KEY]["partition-id"])
            samples = int(metrics.get("train-samples", metrics[self.weighted_by_key]))
            times.append(self.client_time(client, samples, nbytes))
            chosen.append(client)
            received += nbytes
        self._record(times, chosen, received)
        if not total.count:
            return None, None
        new = {key: (g + total.mean(key).to(g.dtype) if key in deltas
                     else total.mean(key).to(g.dtype) if key in total.sums else g)
               for key, g in self.global_arrays.items()}
        metrics = self.train_metrics_aggr_fn([m.content for m in valid], self.weighted_by_key)
        return ArrayRecord(torch_state_dict=new), metrics

    def _record(self, times: list[RoundTime], chosen: list[int], received: int) -> None:
        hist = self.history
        slowest = max(times, key=lambda t: t.total_s) if times else RoundTime(0.0, 0.0, 0.0)
        hist.up_bytes_per_round.append(int(received))
        hist.time_s_per_round.append(slowest.total_s)
        hist.compute_s_per_round.append(slowest.compute_s)
        hist.comm_s_per_round.append(slowest.comm_s)
        hist.chosen.append(tuple(sorted(chosen)))
        hist.dropped.append(())


@functools.cache
def strategy_class() -> type:
    """``CompressedFedAvg``: the averaging above on top of Flower's FedAvg (built on first
    use, so that this module imports without Flower)."""
    from flwr.serverapp.strategy import FedAvg

    return type("CompressedFedAvg", (_CompressedAveraging, FedAvg),
                {"__doc__": _CompressedAveraging.__doc__,
                 "__module__": "odtkit.distributed.flower"})
