"""Compressed-gradient communication hooks for DistributedDataParallel on gloo.

    state, hook = comm_hook("topk", model=model, error_feedback=True, density=0.01)
    ddp = DistributedDataParallel(model)
    ddp.register_comm_hook(state, hook)

Per gradient bucket every rank compresses each parameter's gradient (keyed by parameter
name, so error-feedback residuals persist across steps), all-gathers the byte images of
the payloads (sizes first, then the images padded to the longest, as threshold
compressors send a varying count), decompresses every rank's payload and averages them in
rank order: the same arithmetic as ``odtkit.distributed.simulate``, so all ranks end with
identical parameters and agree with the simulation.
"""

from __future__ import annotations

import dataclasses
import math
import pickle
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ..compress import payload_to_bytes
from ._common import average, dgc_workers, make_compressor, set_epoch

__all__ = ["CompressionHookState", "comm_hook", "compression_hook"]


@dataclasses.dataclass
class CompressionHookState:
    """Per-rank state of the hook: the compressor (own residuals), names, byte counters."""

    codec: Any
    names: dict[int, str]  # id(parameter) -> qualified name
    rank: int
    world_size: int
    group: Any = None
    payload_bytes: list[int] = dataclasses.field(default_factory=list)  # per round, this rank
    wire_bytes: list[int] = dataclasses.field(default_factory=list)  # + headers and padding
    _round: list[int] = dataclasses.field(default_factory=lambda: [0, 0])

    def set_epoch(self, epoch: float) -> None:
        """Forward training progress to the compressor's warm-up schedule (DGC)."""
        set_epoch(self.codec, epoch)

    def name_of(self, param: torch.Tensor) -> str:
        if id(param) not in self.names:
            raise KeyError("a bucket holds a parameter the hook does not know: build the hook "
                           "with comm_hook(..., model=the module you wrap in DDP)")
        return self.names[id(param)]


def comm_hook(compressor: str | Callable[[], Any], *, model: nn.Module,
              error_feedback: bool = False, group: Any = None, seed: int = 0,
              **compressor_kwargs: Any) -> tuple[CompressionHookState, Callable]:
    """(state, hook) for ``ddp.register_comm_hook(state, hook)``; call after init_process_group.

    This rank's compressor gets seed ``seed + rank`` (as worker w in ``simulate``);
    ``model`` (or the DDP wrapper) names the parameters.
    """
    if not dist.is_initialized():
        raise RuntimeError("torch.distributed is not initialized: call "
                           "dist.init_process_group('gloo', ...) before comm_hook")
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    module = getattr(model, "module", model)
    codec = make_compressor(compressor, error_feedback=error_feedback, seed=seed + rank,
                            **dgc_workers(compressor, compressor_kwargs, world))
    names = {id(p): n for n, p in module.named_parameters()}
    return CompressionHookState(codec, names, rank, world, group), compression_hook


def compression_hook(state: CompressionHookState,
                     bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """Compress, all-gather, decompress and average every gradient of the bucket."""
    grads = bucket.gradients()
    names = [state.name_of(p) for p in bucket.parameters()]
    mine = [state.codec.compress(g, n) for g, n in zip(grads, names, strict=True)]
    blob = _pack(mine)
    images = _all_gather_bytes(blob, state.group, state.world_size)
    ranks = [_unpack(image, [ctx for _, ctx in mine]) for image in images]
    averaged = [average([state.codec.decompress(*ranks[r][i]) for r in range(state.world_size)])
                for i in range(len(grads))]
    state._round[0] += sum(state.codec.nbytes(p) for p, _ in mine)
    state._round[1] += max(len(image) for image in images)
    if bucket.is_last():
        state.payload_bytes.append(state._round[0])
        state.wire_bytes.append(state._round[1])
        state._round = [0, 0]
    flat = torch.cat([a.reshape(-1) for a in averaged]).to(bucket.buffer().dtype)
    future: torch.futures.Future[torch.Tensor] = torch.futures.Future()
    future.set_result(flat)
    return future


# DDP inspects these annotations; with postponed evaluation they would be strings
compression_hook.__annotations__.update(
    bucket=dist.GradBucket, state=CompressionHookState,
    **{"return": torch.futures.Future[torch.Tensor]})


def _pack(compressed: list[tuple[tuple[torch.Tensor, ...], Any]]) -> torch.Tensor:
    """One uint8 image: 8-byte header length, pickled layout and ctx metadata, raw tensors.

    The metadata (e.g. random-k's seed) is what a receiver would derive from the sender's
    configuration; it travels here for simplicity and is counted in ``wire_bytes`` only.
    """
    layout = [(ctx.meta, [(str(t.dtype).removeprefix("torch."), tuple(t.shape)) for t in p])
              for p, ctx in compressed]
    header = pickle.dumps(layout)
    chunks = [len(header).to_bytes(8, "little"), header,
              *(payload_to_bytes(payload) for payload, _ in compressed)]
    return torch.frombuffer(bytearray(b"".join(chunks)), dtype=torch.uint8)


def _unpack(image: bytes, ctxs: list[Any]) -> list[tuple[tuple[torch.Tensor, ...], Any]]:
    """Inverse of ``_pack``: (payload, ctx) per tensor, ctx = local ctx with sent metadata."""
    size = int.from_bytes(image[:8], "little")
    layout = pickle.loads(image[8:8 + size])
    pos = 8 + size
    out = []
    for (meta, shapes), ctx in zip(layout, ctxs, strict=True):
        tensors = []
        for dtype_name, shape in shapes:
            dtype = getattr(torch, dtype_name)
            nbytes = math.prod(shape) * torch.empty(0, dtype=dtype).element_size()
            raw = bytearray(image[pos:pos + nbytes])
            t = (torch.frombuffer(raw, dtype=torch.uint8).view(dtype) if nbytes
                 else torch.empty(0, dtype=dtype))
            tensors.append(t.reshape(shape))
            pos += nbytes
        out.append((tuple(tensors), dataclasses.replace(ctx, meta=meta)))
    return out


def _all_gather_bytes(blob: torch.Tensor, group: Any, world: int) -> list[bytes]:
    """All-gather uint8 images of different lengths: lengths first, then padded images."""
    length = torch.tensor([blob.numel()], dtype=torch.int64)
    lengths = [torch.zeros(1, dtype=torch.int64) for _ in range(world)]
    dist.all_gather(lengths, length, group=group)
    longest = int(max(int(n) for n in lengths))
    padded = torch.zeros(longest, dtype=torch.uint8)
    padded[:blob.numel()] = blob
    images = [torch.empty(longest, dtype=torch.uint8) for _ in range(world)]
    dist.all_gather(images, padded, group=group)
    return [images[r][:int(lengths[r])].numpy().tobytes() for r in range(world)]
