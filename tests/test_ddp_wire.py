"""Bytes on the wire, counted where they leave: 4 gloo ranks train a small CNN under
PyTorch's own DDP hooks (fp32 all-reduce, fp16_compress_hook, powerSGD_hook) and under
odtkit's, with torch.distributed's collectives wrapped to record the tensor each call
is given. odtkit's fp16 hook all-reduces half the bytes of fp32 and ends where PyTorch's
fp16 hook ends; its PowerSGD sends no more than powerSGD_hook and, from the same warm
start, ends where it ends; the hook's wire bytes are the ring and all-gather formulas
applied to the counted calls."""

from __future__ import annotations

from collections import defaultdict

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.distributed.algorithms.ddp_comm_hooks import powerSGD_hook as psgd
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel

from odtkit.datasets import load
from odtkit.distributed import comm_hook
from odtkit.distributed.ddp import spawn_local, train_ddp

WORLD, STEPS, RANK, RATE, START = 4, 4, 2, 2.0, 2
COLLECTIVES = ("all_reduce", "all_gather", "all_gather_into_tensor", "reduce_scatter",
               "reduce_scatter_tensor", "broadcast", "all_to_all", "all_gather_object",
               "broadcast_object_list")


def cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Conv2d(8, 16, 3), nn.ReLU(),
                         nn.Flatten(), nn.Linear(16 * 4 * 4, 10))


class Counter:
    """Wraps torch.distributed's collectives; ``calls`` holds (name, bytes of the tensor
    this rank passes in) for every call, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []
        self.saved = {name: getattr(dist, name) for name in COLLECTIVES}
        for name, fn in self.saved.items():
            setattr(dist, name, self._wrap(name, fn))

    def _wrap(self, name, fn):
        def counted(*args, **kwargs):
            tensor = args[1] if name == "all_gather" else args[0]
            if isinstance(tensor, torch.Tensor):
                self.calls.append((name, tensor.numel() * tensor.element_size()))
            else:  # object collectives would pickle: nothing of odtkit's may call them
                self.calls.append((name, -1))
            return fn(*args, **kwargs)
        return counted

    def restore(self) -> None:
        for name, fn in self.saved.items():
            setattr(dist, name, fn)


def wire_by_formula(calls: list[tuple[str, int]]) -> tuple[float, float]:
    """(sent, received) by one rank: ring all-reduce 2(N-1)/N of the buffer each way;
    all-gather its own tensor out, N-1 tensors in."""
    sent = received = 0.0
    for name, size in calls:
        if name == "all_reduce":
            sent += 2 * (WORLD - 1) / WORLD * size
            received += 2 * (WORLD - 1) / WORLD * size
        elif name == "all_gather":
            sent += size
            received += (WORLD - 1) * size
        else:
            raise AssertionError(f"unexpected collective {name}")
    return sent, received


def lowrank_order(model: nn.Module, params) -> list[tuple[str, tuple[int, int]]]:
    """The matrices powerSGD_hook compresses in a bucket, in the order it lays out Q:
    grouped by shape, shapes in order of first appearance."""
    names = {id(p): n for n, p in model.named_parameters()}
    groups: dict[tuple[int, int], list[str]] = defaultdict(list)
    for p in params:
        n, m = p.shape[0], p.numel() // p.shape[0]
        if p.dim() > 1 and (n + m) * RANK * RATE < n * m:
            groups[(n, m)].append(names[id(p)])
    return [(name, shape) for shape, names_ in groups.items() for name in names_]


def warm_start(model: nn.Module) -> dict[str, torch.Tensor]:
    """One (m, RANK) starting Q per weight matrix, shared by both PowerSGD runs."""
    g = torch.Generator().manual_seed(11)
    return {n: torch.randn(p.numel() // p.shape[0], RANK, generator=g)
            for n, p in model.named_parameters() if p.dim() > 1}


def torch_powersgd(model: nn.Module, q0: dict[str, torch.Tensor]):
    """PyTorch's powerSGD_hook, its warm-start Q memory filled from ``q0`` just before its
    first compressed step (otherwise it draws its own)."""
    def hook(state, bucket):
        index = bucket.index()
        if state.iter == state.start_powerSGD_iter and index not in state.p_memory_dict:
            order = lowrank_order(model, bucket.parameters())
            state.q_memory_dict[index] = torch.cat([q0[n].reshape(-1) for n, _ in order])
            state.p_memory_dict[index] = torch.empty(sum(n * RANK for _, (n, _) in order))
        return psgd.powerSGD_hook(state, bucket)

    state = psgd.PowerSGDState(process_group=None, matrix_approximation_rank=RANK,
                               start_powerSGD_iter=START, min_compression_rate=RATE,
                               use_error_feedback=True, warm_start=True)
    return state, hook


def run(make_hook, counter: Counter) -> dict:
    """STEPS of SGD on this rank's shard under the hook; the collectives of each step."""
    rank = dist.get_rank()
    model = cnn()
    ddp = DistributedDataParallel(model)
    state, hook = make_hook(model)
    ddp.register_comm_hook(state, hook)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
    task = load("digits")
    per_step = []
    for step in range(STEPS):
        index = torch.arange(8) + 8 * (WORLD * step + rank)
        counter.calls.clear()
        opt.zero_grad()
        F.cross_entropy(ddp(task.x_train[index]), task.y_train[index]).backward()
        opt.step()
        per_step.append(list(counter.calls))
    return {"params": {k: v.detach().clone() for k, v in model.state_dict().items()},
            "calls": per_step, "state": state if hasattr(state, "wire_sent_bytes_per_round")
            else None}


def _in_each_rank() -> dict:
    counter = Counter()
    try:
        q0 = warm_start(cnn())

        def ours_powersgd(model):
            state, hook = comm_hook("powersgd", model=model, error_feedback=True, rank=RANK,
                                    min_compression_rate=RATE, start_iter=START)
            state.codec.inner.load_state_dict({"steps": {}, "q": q0})
            return state, hook

        runs = {
            "torch fp32": run(lambda m: (None, default_hooks.allreduce_hook), counter),
            "torch fp16": run(lambda m: (None, default_hooks.fp16_compress_hook), counter),
            "odtkit fp16": run(lambda m: comm_hook("fp16", model=m), counter),
            "torch powersgd": run(lambda m: torch_powersgd(m, q0), counter),
            "odtkit powersgd": run(ours_powersgd, counter),
            "odtkit topk": run(lambda m: comm_hook("topk", model=m, density=0.05,
                                                   error_feedback=True), counter),
        }
        counter.calls.clear()
        out = train_ddp(cnn(), load("digits"), compressor="fp16", max_steps=2, batch_size=8)
        trained = {"history": out["history"], "calls": list(counter.calls)}
    finally:
        counter.restore()
    return {"runs": {k: {**v, "state": _plain(v["state"])} for k, v in runs.items()},
            "train_ddp": trained}


def _plain(state) -> dict | None:
    if state is None:
        return None
    return {k: list(getattr(state, k)) for k in ("payload_bytes_per_round",
                                                 "wire_sent_bytes_per_round",
                                                 "wire_recv_bytes_per_round")}


@pytest.fixture(scope="module")
def ranks() -> list[dict]:
    return spawn_local(_in_each_rank, WORLD, timeout_s=120)


def total(run: dict, since: int = 0) -> int:
    return sum(size for step in run["calls"][since:] for _, size in step)


def test_fp16_all_reduces_half_of_fp32_and_ends_where_pytorchs_fp16_hook_ends(ranks):
    for r in ranks:
        runs = r["runs"]
        fp32, ours, theirs = (total(runs[k]) for k in ("torch fp32", "odtkit fp16",
                                                         "torch fp16"))
        assert ours <= 0.55 * fp32, (ours, fp32)
        assert ours == theirs  # the same buffer, cast to 16 bits
        for key, want in runs["torch fp16"]["params"].items():
            torch.testing.assert_close(runs["odtkit fp16"]["params"][key], want, rtol=0,
                                       atol=0)


def test_powersgd_sends_no_more_than_pytorchs_and_ends_where_it_ends(ranks):
    for r in ranks:
        runs = r["runs"]
        ours, theirs = runs["odtkit powersgd"], runs["torch powersgd"]
        # after the dense start both compress: bytes per step, then the whole run
        assert total(ours, START) <= total(theirs, START) < 0.25 * total(runs["torch fp32"],
                                                                        START)
        assert total(ours) <= total(theirs)
        for key, want in theirs["params"].items():
            torch.testing.assert_close(ours["params"][key], want, rtol=1e-5, atol=1e-6)
    # every rank holds the same parameters (one shared approximation)
    for key, want in ranks[0]["runs"]["odtkit powersgd"]["params"].items():
        assert all(torch.equal(r["runs"]["odtkit powersgd"]["params"][key], want)
                   for r in ranks)


def test_hook_wire_bytes_are_the_counted_bytes(ranks):
    for r in ranks:
        for name in ("odtkit fp16", "odtkit powersgd", "odtkit topk"):
            run_, state = r["runs"][name], r["runs"][name]["state"]
            by_formula = [wire_by_formula(calls) for calls in run_["calls"]]
            assert state["wire_sent_bytes_per_round"] == [s for s, _ in by_formula], name
            assert state["wire_recv_bytes_per_round"] == [v for _, v in by_formula], name
        topk = r["runs"]["odtkit topk"]["state"]
        assert all(w > p for w, p in zip(topk["wire_sent_bytes_per_round"],
                                         topk["payload_bytes_per_round"], strict=True))
        hist, calls = r["train_ddp"]["history"], r["train_ddp"]["calls"]
        sent, received = wire_by_formula(calls)
        assert sum(hist.wire_sent_bytes_per_round) == sent
        assert sum(hist.wire_recv_bytes_per_round) == received
        assert hist.up_bytes_per_round == [2 * hist.dense_bytes / 4] * 2  # fp16 payload
        assert hist.exchange == "allreduce" and hist.workers == WORLD
