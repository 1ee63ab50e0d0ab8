"""Compressed-gradient communication hooks for DistributedDataParallel on gloo.

    state, hook = comm_hook("topk", model=model, error_feedback=True, density=0.01)
    ddp = DistributedDataParallel(model)
    ddp.register_comm_hook(state, hook)

Per gradient bucket every rank compresses each parameter's gradient (keyed by parameter
name, so error-feedback residuals persist across steps) and exchanges it with the collective
the maths allows (``_common.exchange_of``):

* ``allreduce`` (fp32, fp16/bf16 casts, random-k with one seed for every rank): the payloads
  are concatenated, divided by the world size and all-reduced in their own dtype, then
  decoded (PyTorch's ``fp16_compress_hook`` does the same for fp16);
* ``powersgd``: three all-reduces as in PyTorch's ``powerSGD_hook`` (the tensors that travel
  dense, then every P, orthogonalized on each rank, then every Q), one shared warm-start Q
  and error feedback against the shared approximation;
* ``allgather`` (top-k, threshold, DGC, QSGD, TernGrad, sign): one framed message of the
  payloads (``odtkit.compress.frame``: a fixed binary header, then raw tensors; lengths
  first, then the messages padded to the longest, as threshold compressors send a varying
  count), every rank's payload decoded and averaged in rank order.

Every path is the arithmetic of ``odtkit.distributed.collectives``, which the simulation
runs, so all ranks end with identical parameters and agree with the simulation. The state
counts per round this rank's payload bytes, all ranks' payload bytes, and the bytes this
rank sent and received for the collectives it called (a ring all-reduce moves 2(N-1)/N of
its buffer each way; an all-gather sends this rank's tensor and receives N-1 of them).

gloo does not authenticate peers, so nothing received is unpickled: every length, dtype
code, shape, metadata entry and decoded value from a peer is checked against this rank's
own payloads, and a malformed message raises ``FrameError`` naming the rank.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ..compress import FrameError, frame, matrix_shape, max_frame_bytes, orthogonalize, unframe
from ._common import (
    allgather_wire_bytes,
    allreduce_wire_bytes,
    average,
    dgc_workers,
    exchange_of,
    make_compressor,
    set_epoch,
    worker_settings,
)
from .collectives import LENGTH_BYTES, keep_shared, local_matrix

__all__ = ["CompressionHookState", "comm_hook", "compression_hook"]


_ROUND = ("payload_bytes_per_round", "total_bytes_per_round", "wire_sent_bytes_per_round",
          "wire_recv_bytes_per_round")
_CASTS = ("none", "fp16", "bf16")  # elementwise and stateless: one call for a whole bucket


@dataclasses.dataclass
class CompressionHookState:
    """Per-rank state of the hook: the compressor (own residuals), names, the exchange
    ('allreduce', 'powersgd' or 'allgather') and byte counters, one entry per round:
    this rank's payload, all ranks' payloads, and what this rank sent and received on the
    wire for the collectives it called (lengths, headers and padding included)."""

    codec: Any
    names: dict[int, str]  # id(parameter) -> qualified name
    rank: int
    world_size: int
    group: Any = None
    exchange: str = "allgather"
    payload_bytes_per_round: list[int] = dataclasses.field(default_factory=list)
    total_bytes_per_round: list[int] = dataclasses.field(default_factory=list)
    wire_sent_bytes_per_round: list[float] = dataclasses.field(default_factory=list)
    wire_recv_bytes_per_round: list[float] = dataclasses.field(default_factory=list)
    _round: list[float] = dataclasses.field(default_factory=lambda: [0, 0, 0.0, 0.0])

    @property
    def wire_bytes_per_round(self) -> list[float]:
        """The bytes this rank put on the wire per round (``wire_sent_bytes_per_round``)."""
        return self.wire_sent_bytes_per_round

    def set_epoch(self, epoch: float) -> None:
        """Forward training progress to the compressor's warm-up schedule (DGC)."""
        set_epoch(self.codec, epoch)

    def name_of(self, param: torch.Tensor) -> str:
        if id(param) not in self.names:
            raise KeyError("a bucket holds a parameter the hook does not know: build the hook "
                           "with comm_hook(..., model=the module you wrap in DDP)")
        return self.names[id(param)]

    def count(self, payload: int, total: int, sent: float, received: float) -> None:
        for i, value in enumerate((payload, total, sent, received)):
            self._round[i] += value

    def close_round(self) -> None:
        for name, value in zip(_ROUND, self._round, strict=True):
            getattr(self, name).append(value)
        self._round = [0, 0, 0.0, 0.0]


def comm_hook(compressor: str | Callable[[], Any], *, model: nn.Module,
              error_feedback: bool = False, group: Any = None, seed: int = 0,
              **compressor_kwargs: Any) -> tuple[CompressionHookState, Callable]:
    """(state, hook) for ``ddp.register_comm_hook(state, hook)``; call after init_process_group.

    This rank's compressor gets seed ``seed + rank`` where payloads are all-gathered and
    ``seed`` where they are all-reduced (as worker w in ``simulate``); ``model`` (or the
    DDP wrapper) names the parameters.
    """
    if not dist.is_initialized():
        raise RuntimeError("torch.distributed is not initialized: call "
                           "dist.init_process_group('gloo', ...) before comm_hook")
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    module = getattr(model, "module", model)
    kwargs = dgc_workers(compressor, compressor_kwargs, world)
    rank_seed, kwargs = worker_settings(compressor, seed, rank, kwargs)
    codec = make_compressor(compressor, error_feedback=error_feedback, seed=rank_seed, **kwargs)
    names = {id(p): n for n, p in module.named_parameters()}
    state = CompressionHookState(codec, names, rank, world, group, exchange_of(codec))
    return state, compression_hook


def compression_hook(state: CompressionHookState,
                     bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """Compress and exchange every gradient of the bucket; the future holds the average."""
    run = {"allreduce": _allreduce, "powersgd": _powersgd}.get(state.exchange, _allgather)
    grads = bucket.gradients()
    names = [state.name_of(p) for p in bucket.parameters()]
    kind = getattr(state.codec, "kind", None)
    if state.exchange == "allreduce" and kind in _CASTS:  # elementwise: the whole buffer
        grads, names = [bucket.buffer()], [f"bucket{bucket.index()}"]
    averaged = run(state, grads, names)
    if bucket.is_last():
        state.close_round()
    flat = (averaged[0].reshape(-1) if len(averaged) == 1
            else torch.cat([a.reshape(-1) for a in averaged])).to(bucket.buffer().dtype)
    future: torch.futures.Future[torch.Tensor] = torch.futures.Future()
    future.set_result(flat)
    return future


def _allreduce(state: CompressionHookState, grads: list[torch.Tensor],
               names: list[str]) -> list[torch.Tensor]:
    """Summable payloads: concatenated, divided by N, all-reduced, split and decoded."""
    world, codec = state.world_size, state.codec
    mine = [codec.compress(g, n) for g, n in zip(grads, names, strict=True)]
    parts = [t.reshape(-1) for payload, _ in mine for t in payload]
    if len({t.dtype for t in parts}) != 1 or not parts[0].is_floating_point():
        raise TypeError(f"{getattr(codec, 'kind', codec)!r} is marked summable but its "
                        f"payloads are {sorted({str(t.dtype) for t in parts})}; an all-reduce "
                        "needs one floating dtype (set summable = False to all-gather)")
    buffer = (parts[0] if len(parts) == 1 else torch.cat(parts)).div_(world)  # payloads: own
    dist.all_reduce(buffer, group=state.group)
    out, pos = [], 0
    for payload, ctx in mine:
        views = []
        for t in payload:
            views.append(buffer[pos:pos + t.numel()].view(t.shape))
            pos += t.numel()
        out.append(codec.decompress(tuple(views), ctx))
    size = buffer.numel() * buffer.element_size()
    wire = allreduce_wire_bytes(size, world)
    state.count(size, size * world, wire, wire)
    return out


def _powersgd(state: CompressionHookState, grads: list[torch.Tensor],
              names: list[str]) -> list[torch.Tensor]:
    """All-reduce the dense tensors, then P (orthogonalized here), then Q."""
    world, codec, group = state.world_size, state.codec, state.group
    inner = getattr(codec, "inner", codec)
    ms = [local_matrix(codec, g, n) for g, n in zip(grads, names, strict=True)]
    low = [inner.exchange_mode(tuple(g.shape), n) == "lowrank"
           for g, n in zip(grads, names, strict=True)]
    shared: list[torch.Tensor | None] = [None] * len(ms)
    size = 0
    dense = [i for i, lr in enumerate(low) if not lr]
    if dense:
        buffer = _reduce([ms[i] for i in dense], group)
        for i, part in zip(dense, _split(buffer.div_(world), [ms[i].shape for i in dense]),
                           strict=True):
            shared[i] = part
            inner.skip(names[i])
        size += 4 * buffer.numel()
    lowrank = [i for i, lr in enumerate(low) if lr]
    if lowrank:
        mats = {i: ms[i].reshape(matrix_shape(tuple(ms[i].shape))) for i in lowrank}
        ps = [inner.project(mats[i], names[i]) for i in lowrank]
        ps = [orthogonalize(p) for p in _split(_reduce(ps, group), [p.shape for p in ps])]
        qs = [mats[i].T @ p for i, p in zip(lowrank, ps, strict=True)]
        qs = _split(_reduce(qs, group).div_(world), [q.shape for q in qs])
        for i, p, q in zip(lowrank, ps, qs, strict=True):
            shared[i] = inner.finish(names[i], p, q, mats[i])
        size += 4 * sum(p.numel() + q.numel() for p, q in zip(ps, qs, strict=True))
    for i, (m, name) in enumerate(zip(ms, names, strict=True)):
        keep_shared(codec, name, m, shared[i], lowrank=low[i])  # type: ignore[arg-type]
    wire = allreduce_wire_bytes(size, world)
    state.count(size, size * world, wire, wire)
    return [s.reshape(g.shape) for s, g in zip(shared, grads, strict=True)]  # type: ignore[union-attr]


def _reduce(tensors: list[torch.Tensor], group: Any) -> torch.Tensor:
    """The tensors concatenated and summed over ranks (one all-reduce)."""
    buffer = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(buffer, group=group)
    return buffer


def _split(buffer: torch.Tensor, shapes: list[torch.Size]) -> list[torch.Tensor]:
    out, pos = [], 0
    for shape in shapes:
        n = math.prod(shape)
        out.append(buffer[pos:pos + n].view(shape))
        pos += n
    return out


def _allgather(state: CompressionHookState, grads: list[torch.Tensor],
               names: list[str]) -> list[torch.Tensor]:
    """Frames all-gathered, every rank's payloads decoded and averaged in rank order."""
    mine = [state.codec.compress(g, n) for g, n in zip(grads, names, strict=True)]
    fixed = state.codec.fixed_size
    limit = max_frame_bytes(mine, fixed_size=fixed)
    images = _all_gather_bytes(frame(mine), state.group, state.world_size, limit)
    ranks = [unframe(image, mine, sender=r, fixed_size=fixed) for r, image in enumerate(images)]
    averaged = [average([_decode(state.codec, *ranks[r][i], sender=r)
                         for r in range(state.world_size)]) for i in range(len(grads))]
    sent, received = allgather_wire_bytes(LENGTH_BYTES + max(len(i) for i in images),
                                          state.world_size)
    state.count(sum(state.codec.nbytes(p) for p, _ in mine),
                sum(state.codec.nbytes(p) for rank in ranks for p, _ in rank), sent, received)
    return averaged


# DDP inspects these annotations; with postponed evaluation they would be strings
compression_hook.__annotations__.update(
    bucket=dist.GradBucket, state=CompressionHookState,
    **{"return": torch.futures.Future[torch.Tensor]})


def _decode(codec: Any, payload: tuple[torch.Tensor, ...], ctx: Any, *,
            sender: int) -> torch.Tensor:
    """A peer's payload decoded, or FrameError naming the rank: a payload that passed the
    frame checks can still carry out-of-range indices, a bad count or non-finite values."""
    try:
        out = codec.decompress(payload, ctx)
    except (IndexError, RuntimeError, ValueError, KeyError) as err:
        raise FrameError(f"malformed message from rank {sender}: its payload for {ctx.name!r} "
                         f"does not decode ({type(err).__name__}: {err})") from err
    if not bool(out.isfinite().all()):
        raise FrameError(f"malformed message from rank {sender}: its payload for {ctx.name!r} "
                         "decodes to non-finite values (compressors send finite ones)")
    return out


def _all_gather_bytes(blob: bytes, group: Any, world: int, limit: int) -> list[bytes]:
    """All-gather byte strings of different lengths: lengths first (each checked against
    ``limit`` before anything is allocated for it), then the images padded to the longest."""
    length = torch.tensor([len(blob)], dtype=torch.int64)
    lengths = [torch.zeros(1, dtype=torch.int64) for _ in range(world)]
    dist.all_gather(lengths, length, group=group)
    sizes = [int(n) for n in lengths]
    for rank, size in enumerate(sizes):
        if not 0 < size <= limit:
            raise FrameError(f"malformed message from rank {rank}: it announces {size} bytes, "
                             f"this bucket allows 1 to {limit}. Every rank must run the same "
                             "odtkit version, model and compressor settings")
    longest = max(sizes)
    padded = torch.zeros(longest, dtype=torch.uint8)
    padded[:len(blob)] = torch.frombuffer(bytearray(blob), dtype=torch.uint8)
    images = [torch.empty(longest, dtype=torch.uint8) for _ in range(world)]
    dist.all_gather(images, padded, group=group)
    return [images[r][:sizes[r]].numpy().tobytes() for r in range(world)]
