"""FedAvg against full-batch gradient descent, non-IID partitions, and the time model
against hand-computed roofline and link numbers (stragglers, deadlines)."""

from __future__ import annotations

import copy
import math
import weakref

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn import functional as F

import odtkit as odt
from odtkit.distributed import federated as fl
from odtkit.distributed import simulate
from odtkit.lab import lab_model


@pytest.fixture(scope="module")
def small(task):
    """The zoo MLP at width 1: 64-128-64-10, 17,226 parameters (fits a 256 KB nRF52840)."""
    return odt.models.create("mlp", input_shape=task.input_shape, num_classes=10, seed=0)


# ------------------------------------------------------------------------- partitions

@settings(max_examples=30, deadline=None)
@given(clients=st.integers(1, 30), scheme=st.sampled_from(fl.PARTITIONS),
       alpha=st.floats(0.2, 50.0), seed=st.integers(0, 1000))
def test_partition_covers_every_sample_once(task, clients, scheme, alpha, seed):
    parts = fl.partition(task.y_train, clients, scheme=scheme, alpha=alpha, seed=seed)
    assert len(parts) == clients and min(len(p) for p in parts) >= 2
    every = torch.cat(parts).sort().values
    assert torch.equal(every, torch.arange(len(task.y_train)))


def test_label_skew_follows_alpha_and_shards(task):
    def labels_per_client(parts):
        return sum(len(task.y_train[p].unique()) for p in parts) / len(parts)

    skewed = fl.partition(task.y_train, 20, scheme="dirichlet", alpha=0.1, seed=0)
    mixed = fl.partition(task.y_train, 20, scheme="dirichlet", alpha=100.0, seed=0)
    assert labels_per_client(skewed) < 5 < 9.5 < labels_per_client(mixed)
    shards = fl.partition(task.y_train, 20, scheme="shards", shards_per_client=2, seed=0)
    # 40 label-sorted shards of ~31 samples, classes of ~126: a shard spans <= 2 labels
    assert max(len(task.y_train[p].unique()) for p in shards) <= 4
    again = fl.partition(task.y_train, 20, scheme="dirichlet", alpha=0.1, seed=0)
    assert all(torch.equal(a, b) for a, b in zip(skewed, again, strict=True))


def test_partition_bad_input(task):
    with pytest.raises(ValueError, match="Did you mean 'dirichlet'"):
        fl.partition(task.y_train, 4, scheme="dirichlett")
    with pytest.raises(ValueError, match=r"alpha must be a finite number in \(0, inf\)"):
        fl.partition(task.y_train, 4, alpha=0.0)
    with pytest.raises(ValueError, match="use fewer clients"):
        fl.partition(task.y_train, 1000)


# ------------------------------------------------------------------------- FedAvg


def _assert_full_batch_sgd(trained, small, task, *, rounds: int, momentum: float) -> None:
    """``trained`` equals ``rounds`` steps of torch.optim.SGD (lr 0.1, ``momentum``) on all
    training data at once, from ``small``: the reference the federated tests check against."""
    ref = copy.deepcopy(small)
    opt = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=momentum)
    for _ in range(rounds):
        opt.zero_grad()
        F.cross_entropy(ref(task.x_train), task.y_train).backward()
        opt.step()
    for a, b in zip(trained.parameters(), ref.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)

def test_fedavg_full_batch_equals_gradient_descent(task, small):
    """All clients, one local full-batch SGD step each: the sample-weighted mean of the
    updates is one gradient-descent step on all training data (the mean gradient)."""
    hist = fl.federated(small, task, clients=3, fraction=1.0, rounds=3, local_epochs=1,
                        batch_size=10_000, lr=0.1, partition_scheme="shards", seed=0)
    _assert_full_batch_sgd(hist.model, small, task, rounds=3, momentum=0.0)
    assert hist.chosen == [(0, 1, 2)] * 3 and hist.dropped == [()] * 3
    assert hist.up_bytes_per_round == [4 * 17_226 * 3] * 3 == hist.down_bytes_per_round


def test_fedavg_learns_and_is_deterministic(task, small):
    kw = dict(clients=10, fraction=0.3, rounds=8, local_epochs=2, lr=0.1, alpha=1.0, seed=4)
    a, b = fl.federated(small, task, **kw), fl.federated(small, task, **kw)
    assert a.as_dict() == b.as_dict()
    assert a.test_acc[-1] > 0.6 and a.test_acc[-1] > a.test_acc[0] + 0.2
    assert all(len(c) == 3 for c in a.chosen) and len(set(a.chosen)) > 1


def test_compressed_uplink_counts_its_bytes(task, small):
    dense = fl.federated(small, task, clients=4, rounds=2, fraction=0.5, seed=1)
    full = fl.federated(small, task, clients=4, rounds=2, fraction=0.5, seed=1,
                        compressor="topk", density=1.0)
    for a, b in zip(dense.model.parameters(), full.model.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)  # top-k of everything is no compression
    sparse = fl.federated(small, task, clients=4, rounds=2, fraction=0.5, seed=1,
                          compressor="topk", density=0.01, error_feedback=True)
    # per client: ceil(1% of each tensor) x (fp32 value + index of 2 or 1 bytes)
    ks = [(82, 2), (2, 1), (82, 2), (1, 1), (7, 2), (1, 1)]
    assert sparse.up_bytes_per_round == [2 * sum(k * (4 + i) for k, i in ks)] * 2


def test_stragglers_are_dropped_at_the_deadline(task, small):
    """IID shards of ~157 samples over BLE (69 KB each way: 0.78 s). A Jetson Nano trains
    them in well under a millisecond; an nRF52840 (21 MMAC/s fp32) needs ~0.32 s more
    (157 x 42,880 training MACs).
    A 1.0 s deadline drops exactly the nRF52840 clients."""
    kw = dict(clients=8, fraction=0.5, rounds=4, seed=2, link="ble", partition_scheme="iid",
              devices=("nrf52840", "jetson-nano"))
    free = fl.federated(small, task, **kw)
    assert 1.05 < max(free.time_s_per_round) < 1.2 and 0.75 < min(free.comm_s_per_round) < 0.8
    cut = fl.federated(small, task, deadline_s=1.0, **kw)
    assert cut.chosen == free.chosen  # the draw does not depend on the deadline
    for chosen, dropped, t in zip(cut.chosen, cut.dropped, cut.time_s_per_round, strict=True):
        assert set(dropped) == {k for k in chosen if cut.devices[k] == "nrf52840"}
        assert t == 1.0 if dropped else t < 0.8
    assert any(cut.dropped) and sum(cut.up_bytes_per_round) < sum(free.up_bytes_per_round)
    nobody = fl.federated(small, task, deadline_s=1e-6, **kw)
    assert sum(nobody.up_bytes_per_round) == 0 and len(set(nobody.test_acc)) == 1


def test_round_time_by_hand():
    """Raspberry Pi 4: 48 GMAC/s fp32, 12.8 GB/s; LTE: 6 Mbit/s up, no latency figure."""
    t = fl.round_time(device="raspberry-pi-4", link="lte", macs=48e9, bytes_moved=6.4e9,
                      upload_bytes=750_000, download_bytes=1_500_000)
    assert t.compute_s == pytest.approx(1.0) and t.upload_s == pytest.approx(1.0)
    assert t.download_s == pytest.approx(2.0) and t.total_s == pytest.approx(4.0)
    memory_bound = fl.round_time(device="raspberry-pi-4", link="ble", macs=0,
                                 bytes_moved=25.6e9, upload_bytes=0, download_bytes=0)
    assert memory_bound.compute_s == pytest.approx(2.0)
    assert memory_bound.upload_s == pytest.approx(0.0075)  # BLE: one connection interval
    phone = fl.round_time(device="phone-snapdragon-7-gen-1", link="lte", macs=75.84e9,
                          bytes_moved=1e12, upload_bytes=0, download_bytes=0)
    assert phone.compute_s == pytest.approx(1.0)  # no bandwidth figure: compute-bound


def test_training_cost_model(small, task):
    # 64*128 + 128*64 + 64*10 = 17,024 MACs per sample forward; backward = 2 x forward
    # less the first layer's input gradient (64*128: it is fed with data, as estimate counts)
    step = 3 * 17_024 - 64 * 128
    assert fl.training_macs(small, 10) == step * 10
    hist = simulate(small, task, workers=4, max_steps=3)
    t = fl.worker_round_time(hist, small, device="raspberry-pi-4", link="lte", batch_size=16)
    # dense fp32 goes by ring all-reduce: 2(N-1)/N of the gradient out, as much in
    assert t.upload_s == pytest.approx(8 * 2 * 3 / 4 * 4 * 17_226 / 6e6)
    assert t.download_s == pytest.approx(t.upload_s)
    acts = 4 * (64 + 128 + 128 + 64 + 64 + 10)  # flatten, linear, relu, ... outputs
    assert fl.training_bytes_moved(small, 32, 16) == 2 * 4 * 4 * 17_226 + 32 * 3 * acts
    assert t.compute_s == pytest.approx(max(step * 16 / 48e9,
                                            (4 * 4 * 17_226 + 16 * 3 * acts) / 12.8e9))
    assert math.isfinite(t.total_s)


def test_federated_bad_input(task, small):
    with pytest.raises(ValueError, match="does not fit client device 'nrf52840'"):
        fl.federated(lab_model(task), task, devices=("nrf52840",), rounds=1)
    with pytest.raises(ValueError, match="clients must be a positive integer, got clients=0"):
        fl.federated(small, task, clients=0)
    with pytest.raises(ValueError, match=r"fraction must be a finite number in \(0, 1\]"):
        fl.federated(small, task, fraction=0.0)
    with pytest.raises(ValueError, match=r"deadline_s must be a finite number in \(0, inf\)"):
        fl.federated(small, task, deadline_s=-1.0)
    with pytest.raises(ValueError, match="Did you mean"):
        fl.federated(small, task, devices=("raspbery-pi-4",), rounds=1)
    with pytest.raises(ValueError, match="has no fp32 peak|no fp32"):
        fl.federated(small, task, devices=("esp32-s3",), rounds=1)


def test_federated_refuses_what_would_go_wrong_later(task, small):
    wrong = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))  # 3 of 10 classes
    with pytest.raises(ValueError, match="task 'digits' has 10 classes"):
        fl.federated(wrong, task, rounds=1)
    for kwargs, message in (({"seed": -1}, "seed=-1"), ({"lr": math.nan}, "lr=nan"),
                            ({"weight_decay": -1}, "weight_decay=-1"),
                            ({"momentum": math.nan}, "momentum=nan")):
        with pytest.raises(ValueError, match=message):
            fl.federated(small, task, rounds=1, **kwargs)
    with pytest.raises(odt.TrainingDiverged, match=r"client \d+ in round \d+ diverged"):
        fl.federated(small, task, clients=4, fraction=1.0, rounds=3, lr=1e6)


def test_round_time_refuses_negative_work():
    for name in ("macs", "bytes_moved", "upload_bytes", "download_bytes"):
        kw = dict(macs=1e6, bytes_moved=1e6, upload_bytes=10, download_bytes=10)
        kw[name] = -1
        with pytest.raises(ValueError, match=rf"{name} must be a finite number in \[0, inf\)"):
            fl.round_time(device="raspberry-pi-4", link="lte", **kw)


def test_fed_history_names_per_round_lists(task, small):
    hist = fl.federated(small, task, clients=4, rounds=2, fraction=0.5, seed=1)
    assert set(hist.as_dict()) >= {"up_bytes_per_round", "down_bytes_per_round",
                                   "time_s_per_round", "compute_s_per_round", "comm_s_per_round"}
    with pytest.warns(DeprecationWarning, match="FedHistory.time_s is now time_s_per_round"):
        assert hist.time_s == hist.time_s_per_round


# ------------------------------------------------------------------------- streaming

class _Spy(odt.compress.NoCompression):
    """Sends the update as is; logs a copy of every decoded tensor and counts how many
    decoded tensors are alive at once (weak references: the spy keeps none alive)."""

    def __init__(self, log: list, live: weakref.WeakSet, peak: list) -> None:
        super().__init__()
        self.log, self.live, self.peak = log, live, peak

    def decompress(self, payload, ctx):
        out = super().decompress(payload, ctx)
        if self.log is not None:
            self.log.append((ctx.name, out.detach().clone()))
        self.live.add(out)
        self.peak[0] = max(self.peak[0], len(self.live))
        return out


def test_streaming_mean_equals_a_direct_weighted_mean(task, small):
    """Every client in one round, unequal shards: the new global model is the old one plus
    sum_k n_k d_k / sum_k n_k of the decoded updates, computed here in float64."""
    log, live, peak = [], weakref.WeakSet(), [0]
    hist = fl.federated(small, task, clients=5, fraction=1.0, rounds=1, alpha=0.5, seed=3,
                        compressor=lambda: _Spy(log, live, peak))
    names = [n for n, _ in small.named_parameters()]
    sizes = torch.tensor(hist.shard_sizes, dtype=torch.float64)
    assert len(set(hist.shard_sizes)) > 1 and len(log) == 5 * len(names)
    for i, (name, before) in enumerate(small.named_parameters()):
        updates = torch.stack([t.double() for n, t in log[i::len(names)]])
        assert all(n == name for n, _ in log[i::len(names)])
        ref = torch.tensordot(sizes / sizes.sum(), updates, dims=1)
        after = dict(hist.model.named_parameters())[name]
        assert torch.allclose(after.double() - before.double(), ref, rtol=0, atol=1e-7)


def test_aggregation_holds_one_update_not_one_per_client(task, small):
    """40 clients in one round: at most two clients' decoded updates (12 tensors) are alive
    at any time; collecting them all before averaging would hold 40 x 6 = 240."""
    live, peak = weakref.WeakSet(), [0]
    fl.federated(small, task, clients=40, fraction=1.0, rounds=1, partition_scheme="iid",
                 compressor=lambda: _Spy(None, live, peak))
    assert 6 <= peak[0] <= 12


@settings(max_examples=30, deadline=None)
@given(weights=st.lists(st.integers(1, 1000), min_size=1, max_size=12),
       seed=st.integers(0, 2**16))
def test_running_mean_is_the_weighted_mean_in_any_order(weights, seed):
    gen = torch.Generator().manual_seed(seed)
    xs = [torch.randn(5, 3, generator=gen) for _ in weights]
    forward, backward = fl.RunningMean(), fl.RunningMean()
    for w, x in zip(weights, xs, strict=True):
        forward.add({"x": x}, w)
    for w, x in reversed(list(zip(weights, xs, strict=True))):
        backward.add({"x": x}, w)
    ref = torch.stack([w * x.double() for w, x in zip(weights, xs, strict=True)]).sum(0)
    ref /= sum(weights)
    assert torch.allclose(forward.mean("x"), ref, rtol=1e-12, atol=1e-15)
    assert torch.allclose(backward.mean("x"), ref, rtol=1e-12, atol=1e-15)
    assert forward.count == len(weights) and forward.weight == sum(weights)


def test_running_mean_refuses_mismatched_updates():
    total = fl.RunningMean()
    total.add({"w": torch.ones(2)}, 3)
    with pytest.raises(ValueError, match=r"tensors \['v'\] does not match"):
        total.add({"v": torch.ones(2)}, 1)
    with pytest.raises(ValueError, match="weight must be a finite number"):
        total.add({"w": torch.ones(2)}, 0)


# ------------------------------------------------------------------------- DGC

def _sparse_bytes(density, numels):
    """Top-k bytes per client: ceil(density * n) fp32 values + indices (1 byte up to 256
    entries, 2 up to 65536)."""
    return sum(max(1, math.ceil(density * n - 1e-9)) * (4 + (1 if n <= 256 else 2))
               for n in numels)


def test_dgc_warm_up_reaches_its_final_density(task, small):
    """The paper's warm-up counted in rounds: 25% -> 6.25% ... exponentially to the final
    density over ``warmup_epochs``, then the final density. (An exact top-k: the sample for
    the threshold covers every entry.)"""
    numels = [p.numel() for p in small.parameters()]
    hist = fl.federated(small, task, clients=2, fraction=1.0, rounds=6, compressor="DGC",
                        density=0.01, warmup_epochs=4, min_sample=10**6, seed=1)
    paper = [0.25 * (0.01 / 0.25) ** (r / 4) if r < 4 else 0.01 for r in range(6)]
    assert hist.up_bytes_per_round == [2 * _sparse_bytes(d, numels) for d in paper]
    assert hist.up_bytes_per_round[-1] < hist.up_bytes_per_round[0] / 20


def test_dgc_momentum_correction_is_heavy_ball_sgd(task, small):
    """Everything sent (density 1), no momentum masking, every client in every round with
    one full-batch step: the weighted mean of the corrected updates u_k = m u_k + d_k is
    heavy-ball SGD on all the data, as torch.optim.SGD(momentum=0.9) runs it."""
    hist = fl.federated(small, task, clients=3, fraction=1.0, rounds=3, batch_size=10_000,
                        lr=0.1, partition_scheme="shards", compressor="dgc", density=1.0,
                        momentum=0.9, momentum_masking=False, warmup=False, seed=0)
    _assert_full_batch_sgd(hist.model, small, task, rounds=3, momentum=0.9)


def test_dgc_clipping_bound_counts_the_clients_in_a_round(task, small):
    """DGC clips to clip_norm / sqrt(N); N defaults to the clients per round, whatever the
    case of the name."""
    kw = dict(clients=4, fraction=0.5, rounds=2, density=0.05, clip_norm=1e-2, seed=2)
    upper = fl.federated(small, task, compressor="DGC", **kw)
    lower = fl.federated(small, task, compressor="dgc", **kw)
    two = fl.federated(small, task, compressor="dgc", num_workers=2, **kw)
    one = fl.federated(small, task, compressor="dgc", num_workers=1, **kw)
    assert upper.as_dict() == lower.as_dict() == two.as_dict() != one.as_dict()
