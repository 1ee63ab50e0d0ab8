"""Compressed-gradient communication hooks for DistributedDataParallel on gloo.

    state, hook = comm_hook("topk", model=model, error_feedback=True, density=0.01)
    ddp = DistributedDataParallel(model)
    ddp.register_comm_hook(state, hook)

Per gradient bucket every rank compresses each parameter's gradient (keyed by parameter
name, so error-feedback residuals persist across steps), all-gathers one framed message of
its payloads (``odtkit.compress.frame``: a fixed binary header, then raw tensors; sizes
first, then the messages padded to the longest, as threshold compressors send a varying
count), decompresses every rank's payload and averages them in rank order: the same
arithmetic as ``odtkit.distributed.simulate``, so all ranks end with identical parameters
and agree with the simulation.

gloo does not authenticate peers, so nothing received is unpickled: every length, dtype
code, shape, metadata entry and decoded value from a peer is checked against this rank's
own payloads, and a malformed message raises ``FrameError`` naming the rank.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ..compress import FrameError, frame, max_frame_bytes, unframe
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
    # one entry per round: this rank's payload bytes, and the framed message it put on the
    # wire (header and padding to the longest rank's message included)
    payload_bytes_per_round: list[int] = dataclasses.field(default_factory=list)
    wire_bytes_per_round: list[int] = dataclasses.field(default_factory=list)
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
    fixed = state.codec.fixed_size
    limit = max_frame_bytes(mine, fixed_size=fixed)
    images = _all_gather_bytes(frame(mine), state.group, state.world_size, limit)
    ranks = [unframe(image, mine, sender=r, fixed_size=fixed) for r, image in enumerate(images)]
    averaged = [average([_decode(state.codec, *ranks[r][i], sender=r)
                         for r in range(state.world_size)]) for i in range(len(grads))]
    state._round[0] += sum(state.codec.nbytes(p) for p, _ in mine)
    state._round[1] += max(len(image) for image in images)
    if bucket.is_last():
        state.payload_bytes_per_round.append(state._round[0])
        state.wire_bytes_per_round.append(state._round[1])
        state._round = [0, 0]
    flat = torch.cat([a.reshape(-1) for a in averaged]).to(bucket.buffer().dtype)
    future: torch.futures.Future[torch.Tensor] = torch.futures.Future()
    future.set_result(flat)
    return future


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
