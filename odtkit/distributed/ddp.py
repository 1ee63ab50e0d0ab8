"""The real thing: data-parallel training on torch.distributed (gloo) with a compressed hook.

    out = train_ddp(model, task, compressor="topk", density=0.01)   # inside each rank
    spawn_local(fn, world_size=4)                                    # ranks on this machine

Each rank runs the one training loop on its shard with DistributedDataParallel and the
hook of ``odtkit.distributed.hook``. Launch with
``torchrun --nproc_per_node=2 -m odtkit.distributed --compressor topk --arg density=0.01``.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import gc
import hashlib
import io
import json
import multiprocessing
import os
import queue
import socket
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ..training import Batch, Loop, TrainConfig, check_model, check_task
from ._common import check_compressor_vs_optimizer, dense_bytes
from .hook import comm_hook
from .simulate import DistHistory

__all__ = ["train_ddp", "spawn_local", "WorkerLostError", "free_port", "main"]


class WorkerLostError(RuntimeError):
    """A peer rank stopped answering (crashed, killed or hung) during a collective."""


# ------------------------------------------------------------------------- training

def train_ddp(model: nn.Module, task: Any, *, compressor: str | Callable[[], Any] = "none",
              error_feedback: bool = False, epochs: int = 1, batch_size: int = 16,
              lr: float = 0.05, optimizer: str = "sgd-m", momentum: float = 0.9,
              weight_decay: float = 0.0, seed: int = 0, max_steps: int | None = None,
              on_step: Callable[[int, int], None] | None = None, grace_s: float = 3.0,
              bucket_cap_mb: float | None = None, **compressor_kwargs: Any) -> dict[str, Any]:
    """Train a copy of ``model`` with DDP and the compression hook (process group ready).

    Same data order and shards as ``simulate`` (rank r = worker r, ``batch_size`` per
    rank). ``on_step(rank, round)`` runs before every round (logging, fault injection).
    A peer that dies raises WorkerLostError naming it. ``bucket_cap_mb`` goes to DDP.
    Each rank runs the training loop of ``odtkit.training`` on its shard. Returns the
    final state_dict, the rank's history (a ``DistHistory``: ``up_bytes_per_round`` is
    this rank's payload, ``total_bytes_per_round`` every rank's, the wire lists what this
    rank sent and received), ``test_acc`` per epoch, the byte lists on their own and the
    number of rounds.
    """
    from torch.nn.parallel import DistributedDataParallel

    config = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, optimizer=optimizer,
                         momentum=momentum, weight_decay=weight_decay, seed=seed,
                         max_steps=max_steps, drop_last=True)
    check_task(task)
    check_model(model, task)
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(seed)
    replica = copy.deepcopy(model).train()
    ddp = DistributedDataParallel(replica, **({} if bucket_cap_mb is None
                                              else {"bucket_cap_mb": bucket_cap_mb}))
    state, hook = comm_hook(compressor, model=replica, error_feedback=error_feedback,
                            seed=seed, **compressor_kwargs)
    check_compressor_vs_optimizer(state.codec, optimizer)
    ddp.register_comm_hook(state, hook)
    loop = _Rank(replica, task, config, forward=ddp, workers=world, shards=[rank],
                 label=f"rank {rank}")
    loop.hook_state, loop.on_step, loop.grace_s = state, on_step, grace_s
    history = loop.run()
    wire = {name: list(getattr(state, name)) for name in ("wire_sent_bytes_per_round",
                                                          "wire_recv_bytes_per_round")}
    dist_history = DistHistory(**history.as_dict(),
                               up_bytes_per_round=list(state.payload_bytes_per_round),
                               total_bytes_per_round=list(state.total_bytes_per_round),
                               compressor=getattr(state.codec, "kind", str(compressor)),
                               workers=world, dense_bytes=dense_bytes(replica),
                               exchange=state.exchange, **wire)
    return {"rank": rank, "state_dict": {k: v.detach().clone() for k, v in
                                         replica.state_dict().items()},
            "test_acc": list(history.test_acc), "history": dist_history,
            "payload_bytes_per_round": list(state.payload_bytes_per_round),
            "wire_bytes_per_round": list(state.wire_sent_bytes_per_round), **wire,
            "rounds": loop.state.global_step}


class _Rank(Loop):
    """This rank's shard of every global batch; DDP's comm hook exchanges in backward."""

    hook_state: Any = None
    on_step: Callable[[int, int], None] | None = None
    grace_s: float = 3.0

    def before_step(self, batch: Batch) -> None:
        if self.on_step is not None:
            self.on_step(self.shards[0], batch.global_step)
        self.hook_state.set_epoch(batch.epoch_progress)

    def compute_shard(self, batch: Batch, worker: int) -> tuple[float, int, int]:
        try:  # forward and backward: the backward's all-gathers fail when a peer is gone
            return super().compute_shard(batch, worker)
        except RuntimeError as err:
            raise WorkerLostError(_describe_failure(worker, self.workers, batch.global_step,
                                                    err, self.grace_s)) from err


def _describe_failure(rank: int, world: int, round_: int, err: Exception,
                      grace_s: float) -> str:
    """Which peers are gone: survivors check in on the rendezvous store for ``grace_s``."""
    missing = _silent_ranks(rank, world, round_, grace_s)
    cause = str(err).splitlines()[0][:200]
    who = (f"rank(s) {missing} did not check in within {grace_s:g} s" if missing
           else "every rank checked in, so the failure came from the transport")
    return (f"rank {rank} lost contact with its peers in round {round_}: {who} "
            f"(crashed, killed, or hung past the process-group timeout). gloo cannot continue "
            f"with a missing worker: read the logs of rank(s) {missing or 'all'}, then restart "
            f"all {world} ranks. Cause: {type(err).__name__}: {cause}")


def _silent_ranks(rank: int, world: int, round_: int, grace_s: float) -> list[int]:
    try:
        store = dist.distributed_c10d._get_default_store()
        keys = [f"odtkit/alive/{round_}/{r}" for r in range(world)]
        store.set(keys[rank], "1")
        deadline = time.monotonic() + grace_s
        while True:
            silent = [r for r in range(world) if r != rank and not store.check([keys[r]])]
            if not silent or time.monotonic() > deadline:
                return silent
            time.sleep(0.05)
    except Exception:  # the store lives with rank 0 (or the torchrun agent): it is gone
        return [0]


# ------------------------------------------------------------------------- local launcher

def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (bind to port 0)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spawn_local(fn: Callable[..., Any], world_size: int, *, timeout_s: float = 60.0,
                pg_timeout_s: float = 20.0, **kwargs: Any) -> list[Any]:
    """Run ``fn(**kwargs)`` in ``world_size`` local processes joined by gloo on 127.0.0.1.

    Returns the results by rank. Any rank that raises, exits early or runs past
    ``timeout_s`` makes this raise RuntimeError listing every rank's outcome; leftover
    processes are killed. ``fn`` must be importable (a module-level function).

    Ranks are forked from multiprocessing's fork server, which has torch imported once
    (so a second call starts its ranks in a fraction of a second instead of importing
    torch in every rank); where there is no fork server (Windows) they are spawned.
    """
    ctx = _context()
    results: queue.Queue = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_child, args=(r, world_size, port, pg_timeout_s, results, fn,
                                              kwargs), daemon=True) for r in range(world_size)]
    for p in procs:
        p.start()
    outcome: dict[int, tuple[str, Any]] = {}
    deadline = time.monotonic() + timeout_s
    while len(outcome) < world_size and time.monotonic() < deadline:
        try:
            rank, status, value = results.get(timeout=0.2)
            outcome[rank] = (status, value)
        except queue.Empty:
            if all(p.exitcode is not None for p in procs) and results.empty():
                break
    for p in procs:
        if p.is_alive():
            p.kill()
        p.join(5)
    for r, p in enumerate(procs):
        if r not in outcome:
            why = (f"still running after {timeout_s:g} s (killed)" if p.exitcode in (None, -9)
                   and time.monotonic() >= deadline else f"exited with code {p.exitcode} "
                   "before reporting a result")
            outcome[r] = ("error", why)
    if any(status != "ok" for status, _ in outcome.values()):
        lines = [f"  rank {r}: {'ok' if s == 'ok' else v}" for r, (s, v) in sorted(outcome.items())]
        raise RuntimeError(f"local gloo run of {getattr(fn, '__name__', fn)} with "
                           f"{world_size} processes failed:\n" + "\n".join(lines))
    return [torch.load(io.BytesIO(outcome[r][1]), weights_only=False) for r in range(world_size)]


def _context() -> Any:
    """The fork server with torch preloaded where the platform has one, else spawn."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    # torch._dynamo: DistributedDataParallel's constructor imports it (seconds per rank)
    ctx.set_forkserver_preload(["torch", "torch.distributed", "torch._dynamo", __name__])
    return ctx


def _child(rank: int, world: int, port: int, pg_timeout_s: float, results: Any,
           fn: Callable[..., Any], kwargs: dict[str, Any]) -> None:
    torch.set_num_threads(1)
    code = 0
    try:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                world_size=world,
                                timeout=datetime.timedelta(seconds=pg_timeout_s))
        buffer = io.BytesIO()
        torch.save(fn(**kwargs), buffer)
        results.put((rank, "ok", buffer.getvalue()))
    except BaseException as err:  # report everything, the parent decides
        results.put((rank, "error", f"{type(err).__name__}: {err}"))
        code = 1
    results.close()
    results.join_thread()
    os._exit(code)  # skip gloo teardown, which can abort when a peer is already gone


# ------------------------------------------------------------------------- torchrun entry

def _parse_value(text: str) -> Any:
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return {"true": True, "false": False, "none": None}.get(text.lower(), text)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """``torchrun --nproc_per_node=N -m odtkit.distributed --compressor topk ...``"""
    parser = argparse.ArgumentParser(prog="python -m odtkit.distributed",
                                     description="Data-parallel training with a compressed "
                                     "gradient hook on gloo (launch with torchrun).")
    parser.add_argument("--compressor", default="none")
    parser.add_argument("--arg", action="append", default=[], metavar="KEY=VALUE",
                        help="compressor keyword, e.g. --arg density=0.01 (repeatable)")
    parser.add_argument("--error-feedback", action="store_true")
    parser.add_argument("--task", default="digits")
    parser.add_argument("--model", default="mlp", help="a zoo model (odtkit.models.names())")
    parser.add_argument("--width", type=float, default=2.0, help="the zoo model's width")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=16, help="per rank")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--optimizer", default="sgd-m")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout-s", type=float, default=60.0)
    args = parser.parse_args(argv)
    kwargs = {}
    for item in args.arg:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--arg needs KEY=VALUE, got {item!r} (e.g. --arg density=0.01)")
        kwargs[key] = _parse_value(value)
    missing = [k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
               if k not in os.environ]
    if missing and not dist.is_initialized():
        parser.exit(2, f"environment lacks {', '.join(missing)}: launch with torchrun, e.g. "
                    "torchrun --nproc_per_node=2 -m odtkit.distributed --compressor topk\n")
    if not dist.is_initialized():
        dist.init_process_group("gloo", init_method="env://",
                                timeout=datetime.timedelta(seconds=args.timeout_s))
    from ..datasets import load
    from ..models import create

    task = load(args.task)
    model = create(args.model, num_classes=task.num_classes, input_shape=task.input_shape,
                   width=args.width, seed=args.seed)
    out = train_ddp(model, task, compressor=args.compressor,
                    error_feedback=args.error_feedback, epochs=args.epochs,
                    max_steps=args.max_steps, batch_size=args.batch_size, lr=args.lr,
                    optimizer=args.optimizer, seed=args.seed, **kwargs)
    digest = hashlib.sha256(b"".join(v.numpy().tobytes() for v in
                                     out["state_dict"].values())).digest()[:8]
    mine = torch.frombuffer(bytearray(digest), dtype=torch.uint8)
    gathered = [torch.empty(8, dtype=torch.uint8) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, mine)  # raw bytes: nothing from a peer is unpickled
    digests = [bytes(t.tolist()).hex() for t in gathered]
    summary = {"world_size": dist.get_world_size(), "compressor": args.compressor,
               "compressor_args": kwargs, "error_feedback": args.error_feedback,
               "test_acc": out["test_acc"], "rounds": out["rounds"],
               "payload_bytes_per_round": (out["payload_bytes_per_round"][-1]
                                           if out["rounds"] else 0),
               "wire_sent_bytes_per_round": (out["wire_sent_bytes_per_round"][-1]
                                             if out["rounds"] else 0),
               "wire_recv_bytes_per_round": (out["wire_recv_bytes_per_round"][-1]
                                             if out["rounds"] else 0),
               "exchange": out["history"].exchange,
               "parameter_digests": digests, "identical": len(set(digests)) == 1}
    if dist.get_rank() == 0:
        print(json.dumps(summary), flush=True)
    gc.collect()  # free the DDP reducer (it holds the group) before the group goes
    dist.barrier()  # nobody tears down while a peer still reads its last message
    dist.destroy_process_group()
    return summary
