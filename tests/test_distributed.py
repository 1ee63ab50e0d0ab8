"""Simulated data-parallel workers against a plain PyTorch loop and hand-computed bytes;
real DDP communication hooks on gloo (2 and 3 processes) against the simulation; a dead
rank; the torchrun entry point."""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn import functional as F

import odtkit as odt
from odtkit import compress
from odtkit import distributed as dd
from odtkit.distributed.collectives import exchange
from odtkit.distributed.ddp import free_port, spawn_local, train_ddp
from odtkit.distributed.simulate import _exchange, global_batches, simulate
from odtkit.lab import lab_model

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model(task):
    return lab_model(task, seed=0)


def bn_model() -> nn.Module:
    """A model with BatchNorm buffers: DDP broadcasts rank 0's, the simulation must too."""
    torch.manual_seed(3)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(),
                         nn.Linear(32, 10))


# ------------------------------------------------------------------------- simulation

def test_dense_workers_equal_one_big_batch(task, model):
    """4 workers x 8 samples, fp32, averaged = one SGD-m step on the 32-sample batch."""
    hist = simulate(model, task, workers=4, batch_size=8, lr=0.05, epochs=2, max_steps=50,
                    seed=5)
    ref = copy.deepcopy(model)
    opt = torch.optim.SGD(ref.parameters(), lr=0.05, momentum=0.9)
    gen = torch.Generator().manual_seed(5)
    steps, n = 0, len(task.y_train)
    while steps < 50:
        perm = torch.randperm(n, generator=gen)
        for s in range(n // 32):
            idx = perm[s * 32:(s + 1) * 32]
            opt.zero_grad()
            F.cross_entropy(ref(task.x_train[idx]), task.y_train[idx]).backward()
            opt.step()
            steps += 1
            if steps == 50:
                break
    for (name, a), b in zip(hist.model.state_dict().items(), ref.state_dict().values(),
                            strict=True):
        # the mean of 4 shard means vs one mean over 32: only the summation order differs
        assert torch.allclose(a, b, atol=1e-5, rtol=0), name
    assert hist.steps == [39, 50] and len(hist.up_bytes_per_round) == 50
    assert hist.compression_ratio == 1.0
    assert hist.up_bytes_per_round[0] == hist.dense_bytes == 4 * 50_826
    assert hist.total_bytes_per_round[0] == 4 * hist.dense_bytes


def test_topk_bytes_hand_counted(task, model):
    """density 0.1% of 64-256-128-10: k per tensor = ceil(0.001 n); fp32 values plus the
    narrowest index (int16 up to 65,536 entries, uint8 up to 256)."""
    hist = simulate(model, task, compressor="topk", density=0.001, error_feedback=True,
                    max_steps=2)
    ks = {(256, 64): (17, 2), (256,): (1, 1), (128, 256): (33, 2), (128,): (1, 1),
          (10, 128): (2, 2), (10,): (1, 1)}
    want = sum(k * (4 + idx) for k, idx in ks.values())
    assert want == 327
    assert hist.up_bytes_per_round == [327, 327]
    assert hist.total_bytes_per_round == [4 * 327, 4 * 327]
    assert hist.compression_ratio == pytest.approx(4 * 50_826 / 327)
    assert hist.compressor == "ef(topk)" and hist.workers == 4
    # on the wire: an int64 length, then the frame: a 9-byte head and per tensor 2 bytes
    # of counts and two (dtype, ndim, size) triples of 6 bytes; received from 3 others
    assert hist.exchange == "allgather"
    assert hist.wire_sent_bytes_per_round == [8 + 9 + 6 * (2 + 2 * 6) + 327] * 2 == [428] * 2
    assert hist.wire_recv_bytes_per_round == [3 * 428] * 2
    assert hist.wire_ratio == pytest.approx(2 * 3 / 4 * 4 * 50_826 / 428)


def test_dense_goes_by_ring_all_reduce(task, model):
    """fp32 and fp16 are summed, not gathered: 2(N-1)/N of the buffer out and in."""
    for name, width in (("none", 4), ("fp16", 2)):
        hist = simulate(model, task, workers=4, compressor=name, max_steps=1)
        assert hist.exchange == "allreduce" and hist.up_bytes_per_round == [width * 50_826]
        assert hist.wire_sent_bytes_per_round == [1.5 * width * 50_826]
        assert hist.wire_recv_bytes_per_round == hist.wire_sent_bytes_per_round


def test_simulated_powersgd_is_the_papers_all_reduce():
    """3 workers, a 12 x 9 weight and a bias: every worker gets U U^T mean(M) with U an
    orthonormal basis of mean(M) Q0 (torch.linalg), keeps e_k = M_k minus it, and all keep
    one warm-start Q; the bias is averaged and leaves no residual."""
    gen = torch.Generator().manual_seed(0)
    grads = [[torch.randn(12, 9, generator=gen), torch.randn(12, generator=gen)]
             for _ in range(3)]
    q0 = torch.randn(9, 2, generator=gen)
    codecs = [compress.get("powersgd", rank=2, error_feedback=True) for _ in range(3)]
    for c in codecs:
        c.inner.load_state_dict({"steps": {}, "q": {"w": q0}})
    out = exchange(codecs, ["w", "b"], grads)
    mean = torch.stack([g[0] for g in grads]).mean(0).double()
    u = torch.linalg.qr(mean @ q0.double()).Q
    torch.testing.assert_close(out.averaged[0].double(), u @ u.T @ mean, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.averaged[1], torch.stack([g[1] for g in grads]).mean(0))
    for c, g in zip(codecs, grads, strict=True):
        torch.testing.assert_close(c.residual("w"), g[0] - out.averaged[0])
        assert not c.residual("b").any()
        assert torch.equal(c.inner.state_dict()["q"]["w"], codecs[0].inner.state_dict()["q"]["w"])
    payload = 4 * (2 * (12 + 9) + 12)  # P, Q and the bias, fp32
    assert out.payload_bytes == [payload] * 3
    assert out.wire_sent_bytes == out.wire_recv_bytes == pytest.approx(2 * 2 / 3 * payload)


def test_powersgd_start_iter_sends_dense_first(task, model):
    hist = simulate(model, task, compressor="powersgd", rank=2, start_iter=2,
                    error_feedback=True, max_steps=3)
    shapes = [(256, 64), (128, 256), (10, 128)]
    assert hist.up_bytes_per_round == [4 * 50_826] * 2 + [
        4 * (sum(2 * (n + m) for n, m in shapes) + 256 + 128 + 10)]
    assert hist.exchange == "powersgd"


def test_random_k_workers_share_positions_and_all_reduce(task, model):
    """One seed for every worker's positions: the same k positions, so the sum has k
    entries (not up to N k) and holds the workers' mean there; simulate shares it."""
    gen = torch.Generator().manual_seed(1)
    grads = [[torch.randn(40, generator=gen)] for _ in range(4)]
    shared = {"shared_seed": 9} if "shared_seed" in compress.get("randomk").config() else {}
    codecs = [compress.get("randomk", k=3, seed=9 + w, **shared) if shared
              else compress.get("randomk", k=3, seed=9) for w in range(4)]
    out = exchange(codecs, ["g"], grads)
    kept = out.averaged[0].nonzero().reshape(-1)
    assert kept.numel() == 3
    mean = torch.stack([g[0] for g in grads]).mean(0)
    torch.testing.assert_close(out.averaged[0][kept], mean[kept])
    assert out.payload_bytes == [12] * 4 and out.wire_sent_bytes == 1.5 * 12
    hist = simulate(model, task, compressor="randomk", density=0.01, max_steps=1)
    assert hist.exchange == "allreduce"


def test_exchange_averages_each_workers_top1():
    """Two workers, top-1: worker 0 sends -5 at 1, worker 1 sends 4 at 0 -> [2, -2.5, 0]."""
    codecs = [compress.get("topk", k=1) for _ in range(2)]
    avg, sent = _exchange(codecs, ["w"], [[torch.tensor([3.0, -5.0, 1.0])],
                                          [torch.tensor([4.0, 0.0, -2.0])]])
    assert torch.equal(avg[0], torch.tensor([2.0, -2.5, 0.0]))
    assert sent == [5, 5]  # one fp32 value + one uint8 index each


@settings(max_examples=25, deadline=None)
@given(workers=st.integers(1, 5), n=st.integers(1, 40), seed=st.integers(0, 2**16))
def test_exchange_uncompressed_is_the_mean(workers, n, seed):
    gen = torch.Generator().manual_seed(seed)
    grads = [[torch.randn(n, generator=gen)] for _ in range(workers)]
    for name in ("none", "topk"):
        kw = {"density": 1.0} if name == "topk" else {}
        codecs = [compress.get(name, **kw) for _ in range(workers)]
        avg, _ = _exchange(codecs, ["g"], grads)
        want = torch.stack([g[0] for g in grads]).mean(0)
        assert torch.allclose(avg[0], want, atol=1e-6), name


@settings(max_examples=25, deadline=None)
@given(workers=st.integers(1, 5), n=st.integers(1, 300), seed=st.integers(0, 2**16),
       name=st.sampled_from(["none", "fp16", "bf16", "randomk"]))
def test_all_reduced_payloads_decode_to_the_mean_of_the_decoded(workers, n, seed, name):
    """What makes a payload summable: the decoded sum of the workers' payloads (divided
    by N) is the mean of what each worker's payload decodes to, up to the rounding of the
    sum in the payload's dtype (fp16: 2**-11 relative, bf16: 2**-8 per addition)."""
    gen = torch.Generator().manual_seed(seed)
    grads = [[torch.randn(n, generator=gen)] for _ in range(workers)]
    shared = {"shared_seed": seed} if "shared_seed" in compress.get("randomk").config() else {}
    kw = {"randomk": {"density": 0.1, **shared}}.get(name, {})
    codecs = [compress.get(name, seed=seed, **kw) for _ in range(workers)]
    out = exchange(codecs, ["g"], grads)
    by_hand = {"none": 4 * n, "fp16": 2 * n, "bf16": 2 * n, "randomk": 4 * math.ceil(0.1 * n)}
    assert out.payload_bytes == [by_hand[name]] * workers
    ring = 2 * (workers - 1) / workers * by_hand[name]
    assert out.wire_sent_bytes == out.wire_recv_bytes == pytest.approx(ring)
    probes = [compress.get(name, seed=seed, **kw) for _ in range(workers)]
    decoded = [p.decompress(*p.compress(g[0], "g")) for p, g in zip(probes, grads, strict=True)]
    want = torch.stack(decoded).mean(0)
    tol = {"none": 1e-6, "fp16": 4e-3, "bf16": 3e-2, "randomk": 1e-6}[name]
    scale = torch.stack(decoded).abs().max()
    assert float((out.averaged[0] - want).abs().max()) <= tol * workers * float(scale) + 1e-7


def test_deterministic_and_seed_sensitive(task, model):
    kw = dict(compressor="qsgd", levels=4, max_steps=6, workers=3)
    a, b = simulate(model, task, seed=1, **kw), simulate(model, task, seed=1, **kw)
    c = simulate(model, task, seed=2, **kw)
    untimed = [{k: v for k, v in h.as_dict().items() if k != "time_s"} for h in (a, b)]
    assert untimed[0] == untimed[1] and a.up_bytes_per_round == b.up_bytes_per_round
    for x, y in zip(a.model.parameters(), b.model.parameters(), strict=True):
        assert torch.equal(x, y)
    assert a.loss != c.loss
    untouched = zip(model.parameters(), lab_model(task).parameters(), strict=True)
    assert all(torch.equal(p, q) for p, q in untouched)


def test_global_batches_shard_every_sample_once_per_epoch():
    rounds = list(global_batches(50, workers=3, batch_size=4, epochs=2, seed=0))
    assert len(rounds) == 2 * (50 // 12)
    first = torch.cat([idx for e, _, idx in rounds if e == 0])
    assert len(set(first.tolist())) == len(first) == 48


def test_bad_input_is_explained(task, model):
    with pytest.raises(ValueError, match="workers must be a positive integer"):
        simulate(model, task, workers=0)
    with pytest.raises(ValueError, match="exceeds the 1258 training samples"):
        simulate(model, task, workers=4, batch_size=400)
    with pytest.raises(TypeError, match="own instance"):
        simulate(model, task, compressor=compress.get("topk"))
    with pytest.raises(ValueError, match="Did you mean 'topk'"):
        simulate(model, task, compressor="top-kk")
    with pytest.raises(ValueError, match="optimizer must be plain 'sgd'"):
        simulate(model, task, compressor="dgc", optimizer="sgd-m", max_steps=1)
    with pytest.raises(ValueError, match="already keeps its own residual"):
        simulate(model, task, compressor="dgc", error_feedback=True, optimizer="sgd")


def test_non_finite_inputs_stop_training_naming_the_cause(task, model):
    """NaN inputs give a NaN loss: training stops there, before any compressor or update
    sees its gradient, and says the inputs are the cause."""
    x = task.x_train.clone()
    x[:] = float("nan")
    bad = type(task)(name="nan", description="", x_train=x, y_train=task.y_train,
                     x_test=task.x_test, y_test=task.y_test, input_shape=task.input_shape,
                     classes=task.classes)
    with pytest.raises(odt.TrainingDiverged, match=r"loss became nan at step 1 \(epoch 1, step "
                       r"1 of 19\) on worker 0.*batch holds NaN or infinite inputs"):
        simulate(model, bad, compressor="topk", density=0.01, max_steps=1)


# ------------------------------------------------------------------------- real DDP on gloo

def _several(runs: list[dict]) -> list[dict]:
    """Run in each spawned rank: one train_ddp per config, in one process group."""
    return [train_ddp(**run) for run in runs]


def _die_in_round_3(rank: int, round_: int) -> None:
    if rank == 1 and round_ == 3:
        os._exit(3)  # a crash: no exception, no goodbye


DDP_CASES = [
    ("topk", dict(density=0.01, error_feedback=True)),
    ("threshold", dict(threshold=0.005, error_feedback=True, bucket_cap_mb=0.05)),
    ("randomk", dict(density=0.05)),
    ("fp16", dict(error_feedback=True)),
    ("qsgd", dict(levels=4)),
    ("powersgd", dict(rank=2, error_feedback=True)),
    ("dgc", dict(density=0.01, optimizer="sgd", warmup_epochs=1)),
    ("none", dict(model="bn")),
]


def _model_for(case: dict, model: nn.Module) -> nn.Module:
    return bn_model() if case.get("model") == "bn" else model


def test_ddp_hook_matches_simulation_on_two_ranks(task, model):
    """Every rank ends with identical parameters, equal to the simulation's.

    Same shards, same compressor seeds (seed + rank), the same rank-order average and one
    thread everywhere make the arithmetic identical, so the ranks agree bit for bit and
    with the simulation to 1e-6 (room only for kernel reassociation; one SGD step here
    moves weights by ~1e-3)."""
    runs = []
    for name, kw in DDP_CASES:
        kw = {k: v for k, v in kw.items() if k != "model"}
        runs.append(dict(model=_model_for(dict(DDP_CASES)[name], model), task=task,
                         compressor=name, max_steps=5, seed=7, **kw))
    ranks = spawn_local(_several, 2, timeout_s=60, runs=runs)  # a hang fails, not waits
    for (name, _), run, r0, r1 in zip(DDP_CASES, runs, ranks[0], ranks[1], strict=True):
        for key, _ in run["model"].named_parameters():  # buffers: each rank keeps its last
            assert torch.equal(r0["state_dict"][key], r1["state_dict"][key]), (name, key)
        sim_kw = {k: v for k, v in run.items() if k not in ("model", "task", "bucket_cap_mb")}
        hist = simulate(run["model"], task, workers=2, **sim_kw)
        for key, want in hist.model.state_dict().items():  # rank 0's buffers, as DDP sends
            got = r0["state_dict"][key]
            assert torch.allclose(got.float(), want.float(), atol=1e-6, rtol=0), (name, key)
        both = zip(r0["payload_bytes_per_round"], r1["payload_bytes_per_round"], strict=True)
        assert [a + b for a, b in both] == hist.total_bytes_per_round, name
        assert r0["history"].total_bytes_per_round == hist.total_bytes_per_round, name
        assert r0["history"].exchange == hist.exchange, name
        if "bucket_cap_mb" not in run:  # one bucket, as the simulation counts
            for key in ("wire_sent_bytes_per_round", "wire_recv_bytes_per_round"):
                assert r0[key] == r1[key] == getattr(hist, key), (name, key)
        if hist.exchange == "allgather":  # + length, header, metadata and padding
            framed = zip(r0["wire_bytes_per_round"], r0["payload_bytes_per_round"], strict=True)
            assert all(w > p for w, p in framed), name
        else:  # a ring all-reduce on 2 ranks sends each rank's buffer once, each way
            assert r0["wire_sent_bytes_per_round"] == r0["payload_bytes_per_round"], name
        assert r0["history"].steps == hist.steps and r0["history"].test_acc == r0["test_acc"]


def test_ddp_hook_on_three_ranks(task, model):
    """An odd world size and sign compression with error feedback."""
    run = dict(model=model, task=task, compressor="signsgd", error_feedback=True,
               scale="mean", max_steps=4, seed=1, lr=0.01)
    ranks = spawn_local(_several, 3, timeout_s=60, runs=[run])
    hist = simulate(model, task, workers=3, **{k: v for k, v in run.items()
                                                if k not in ("model", "task")})
    for key, want in hist.model.state_dict().items():
        assert torch.equal(ranks[0][0]["state_dict"][key], ranks[2][0]["state_dict"][key])
        assert torch.allclose(ranks[1][0]["state_dict"][key], want, atol=1e-6, rtol=0)


def test_dead_rank_stops_the_survivor_with_a_clear_error(task, model):
    run = dict(model=model, task=task, compressor="topk", density=0.01, max_steps=50,
               on_step=_die_in_round_3)
    started = time.monotonic()
    with pytest.raises(RuntimeError) as info:
        spawn_local(_several, 2, timeout_s=40, pg_timeout_s=10, runs=[run])
    elapsed = time.monotonic() - started
    message = str(info.value)
    assert "rank 0: WorkerLostError" in message
    assert "rank(s) [1] did not check in" in message and "round 3" in message
    assert "rank 1: exited with code 3" in message
    # a hang bound, not a speed target: the survivor gave up before spawn_local's own
    # 40 s timeout (process start-up is most of the time, and it varies with load)
    assert elapsed < 30, f"the survivor took {elapsed:.1f} s to give up"


def test_torchrun_entry_point(tmp_path):
    port = free_port()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
           "--master_addr=127.0.0.1", f"--master_port={port}", "-m", "odtkit.distributed",
           "--compressor", "topk", "--arg", "density=0.01", "--error-feedback",
           "--max-steps", "3", "--timeout-s", "20"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=90, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    summary = json.loads([line for line in out.stdout.splitlines() if line.startswith("{")][0])
    assert summary["world_size"] == 2 and summary["rounds"] == 3
    assert summary["identical"] is True
    # top-k all-gathers: this rank's length and frame out, the other rank's in
    assert summary["exchange"] == "allgather"
    assert summary["wire_sent_bytes_per_round"] == summary["wire_recv_bytes_per_round"]
    assert summary["wire_sent_bytes_per_round"] > summary["payload_bytes_per_round"]


def test_entry_point_without_torchrun_says_how_to_launch(capsys):
    env_keys = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    saved = {k: os.environ.pop(k) for k in env_keys if k in os.environ}
    try:
        with pytest.raises(SystemExit):
            dd.main(["--compressor", "topk"])
    finally:
        os.environ.update(saved)
    assert "torchrun --nproc_per_node=2" in capsys.readouterr().err


# ------------------------------------------------------------------------- figures

def _hist(acc: float, up: list[float]) -> dd.DistHistory:
    return dd.DistHistory(loss=[1.0, 0.5], train_acc=[0.5, acc], test_acc=[0.4, acc],
                          time_s=[1.0, 1.0], steps=[2, 4], samples=[8, 16], up_bytes_per_round=up,
                          total_bytes_per_round=[2 * u for u in up], compressor="x", workers=2,
                          dense_bytes=400)


def test_figures_plot_what_they_are_given():
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    from odtkit.distributed.federated import FedHistory, RoundTime
    from odtkit.viz import compression as vc

    runs = {"a": [_hist(0.9, [100, 300]), _hist(0.7, [100, 300])], "b": _hist(0.5, [10] * 2),
            "c": {"bytes_per_worker_per_round": 5, "final_acc_mean": 0.25, "final_acc_std": 0}}
    assert vc.run_point(runs["a"]) == (200.0, pytest.approx(0.8), pytest.approx(0.1))
    fig = odt.viz.bytes_vs_accuracy(runs, dense_bytes=400)
    points = [c.lines[0].get_xydata()[0].tolist() for c in fig.axes[0].containers]
    assert points == [[200.0, pytest.approx(80.0)], [10.0, 50.0], [5.0, 25.0]]
    times = {"a": {"ble": RoundTime(0.5, 1.0, 3.0)}, "b": {"ble": RoundTime(0.5, 0.1, 0.3)}}
    fig = odt.viz.round_time_bars(times)
    widths = sorted(round(p.get_width(), 6) for p in fig.axes[0].patches)
    assert widths == [0.1, 0.3, 0.5, 0.5, 1.0, 3.0]
    fed = FedHistory(test_acc=[0.2, 0.6], time_s_per_round=[2.0, 3.0],
                     up_bytes_per_round=[1, 1], down_bytes_per_round=[1, 1],
                     compute_s_per_round=[1, 1], comm_s_per_round=[1, 1], chosen=[(0,), (0,)],
                     dropped=[(), ()])
    fig = odt.viz.federated_progress({"f": fed})
    assert fig.axes[0].lines[0].get_xydata().tolist() == [[2.0, 20.0], [5.0, 60.0]]
    fig = odt.viz.powersgd_rank_sweep({1: _hist(0.5, [10, 10]), 2: _hist(0.6, [20, 20])})
    assert fig.axes[1].lines[0].get_ydata().tolist() == [10.0, 20.0]
    fig = odt.viz.accuracy_points({"a": runs["a"], "b": runs["b"]}, dense_bytes=400)
    assert "2x" in " ".join(t.get_text() for t in fig.axes[0].texts)
    fig = odt.viz.compression_curves({"a": runs["a"], "b": runs["b"]})
    assert fig.axes[0].lines[0].get_ydata().tolist() == [40.0, 90.0]
    with pytest.raises(ValueError, match="curve_seed0"):
        odt.viz.compression_curves(runs)
    plt.close("all")
    with pytest.raises(ValueError, match="nothing to plot"):
        odt.viz.bytes_vs_accuracy({})
    with pytest.raises(TypeError, match="odt.distributed.simulate"):
        odt.viz.bytes_vs_accuracy({"x": object()})


def test_wire_bytes_bars_show_payload_and_wire_means():
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    h = dd.DistHistory(loss=[1.0], train_acc=[0.5], test_acc=[0.5], time_s=[1.0], steps=[2],
                       samples=[8], up_bytes_per_round=[100, 300],
                       total_bytes_per_round=[400, 1200], wire_sent_bytes_per_round=[150, 450],
                       wire_recv_bytes_per_round=[160, 460], exchange="allreduce", workers=4,
                       dense_bytes=400)
    fig = odt.viz.wire_bytes_bars({"a": h})
    assert sorted(p.get_width() for p in fig.axes[0].patches) == [200, 300, 310]
    assert "allreduce" in " ".join(t.get_text() for t in fig.axes[0].texts)
    plt.close("all")
    with pytest.raises(TypeError, match="no wire bytes"):
        odt.viz.wire_bytes_bars({"b": _hist(0.5, [10, 10])})


# ------------------------------------------------------------------------- nothing silently wrong

def test_model_for_another_task_is_named_before_training(task):
    wrong = nn.Sequential(nn.Flatten(), nn.Linear(10, 10))  # digits have 64 inputs
    with pytest.raises(ValueError, match=r"cannot run on task 'digits': its inputs have "
                       r"shape \(1, 8, 8\)"):  # fmt: skip
        simulate(wrong, task, max_steps=1)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"seed": -1}, "seed must be a non-negative integer, got seed=-1"),
    ({"lr": float("nan")}, "lr=nan"),
    ({"momentum": float("nan")}, "momentum=nan"),
    ({"weight_decay": -1}, "weight_decay=-1"),
    ({"max_steps": 0}, "max_steps=0"),
])
def test_bad_training_knobs_are_named(task, model, kwargs, message):
    with pytest.raises(ValueError, match=message):
        simulate(model, task, **kwargs)


def test_global_batches_checks_its_arguments_at_the_call():
    with pytest.raises(ValueError, match="workers must be a positive integer, got workers=-1"):
        global_batches(50, workers=-1, batch_size=4, epochs=1, seed=0)  # no iteration needed
    with pytest.raises(ValueError, match="seed=-2"):
        global_batches(50, workers=2, batch_size=4, epochs=1, seed=-2)


def test_divergence_names_the_worker_and_step(task):
    mlp = odt.models.create("mlp", input_shape=task.input_shape, num_classes=10, seed=0)
    with pytest.raises(odt.TrainingDiverged, match=r"simulate diverged: the loss became "
                       r"(nan|inf) at step \d+ .* on worker \d.*lr=1e\+06 is too large"):
        simulate(mlp, task, workers=2, lr=1e6, epochs=2, batch_size=8)


def test_old_history_names_warn_with_the_new_name(task, model):
    hist = simulate(model, task, workers=2, max_steps=2)
    with pytest.warns(DeprecationWarning, match="bytes_up is now up_bytes_per_round"):
        assert hist.bytes_up == hist.up_bytes_per_round
    with pytest.warns(DeprecationWarning, match="compute_s is now compute_s_per_round"):
        assert hist.compute_s == sum(hist.compute_s_per_round) > 0
    assert len(hist.compress_s_per_round) == hist.rounds == 2
    with pytest.raises(AttributeError, match="no attribute 'bytes_upp'"):
        hist.bytes_upp  # noqa: B018
