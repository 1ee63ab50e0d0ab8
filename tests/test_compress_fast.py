"""What makes the compressors fast, checked as behaviour: no finiteness scan of a clean
tensor (torch.profiler lists the ops that ran), random-k's O(k) seeded sampler (distinct,
uniform, deterministic), shared-seed random-k and the summable hint, float32 norms that
stay exact for tiny buckets, DGC's in-place state, and case-insensitive names."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.profiler import ProfilerActivity, profile

import odtkit as odt
from odtkit.compress import DGC, RandomK, sample_positions

NAMES = odt.compress.names()
FAST = settings(max_examples=40, deadline=None, derandomize=True, database=None)


def make(name: str, **kwargs):
    powersgd = odt.compress.canonical_name(name) == "powersgd"
    extra = {"rank_too_large": "dense"} if powersgd else {}
    return odt.compress.get(name, **{**extra, **kwargs})


def grad(shape=(64, 64), seed=0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def ops_run(fn) -> set[str]:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return {event.key for event in prof.key_averages()}


@pytest.mark.parametrize("name", NAMES)
def test_a_clean_tensor_is_not_scanned_for_non_finite_entries(name):
    c, x = make(name), grad()
    assert "aten::isfinite" not in ops_run(lambda: c.compress(x, "w"))
    x[5, 7] = float("nan")  # the reduction it folds the check into sees it: now it scans
    if name in ("none", "fp16", "bf16"):  # transparent: the NaN is sent, where it was
        y = make(name).decompress(*make(name).compress(x, "w"))
        assert torch.isnan(y).reshape(-1).nonzero().tolist() == [[327]]
        return
    with pytest.raises(ValueError, match="'w' has 1 non-finite entries.*flat index 327"):
        make(name).compress(x, "w")


@pytest.mark.parametrize("name", ["none", "topk", "threshold", "qsgd", "terngrad", "fp16"])
def test_finite_values_whose_sum_overflows_are_sent(name):
    x = torch.full((4, 8), 3e38)  # every reduction overflows float32; no entry is bad
    x[0, 0] = -3e38
    c = make(name, **{"threshold": {"threshold": 1.0}, "qsgd": {"bucket_size": 1}}.get(name, {}))
    if name == "fp16":
        with pytest.raises(ValueError, match="above the fp16 maximum"):
            c.compress(x, "w")
        return
    y = c.decompress(*c.compress(x, "w"))
    assert bool(y.isfinite().all()) and float(y.abs().max()) <= 3.4e38


# -- random-k ----------------------------------------------------------------
@FAST
@given(n=st.integers(1, 10**6), share=st.floats(0.0, 1.0), seed=st.integers(0, 2**63 - 1))
def test_sampler_gives_k_distinct_sorted_positions_from_the_seed(n, share, seed):
    k = max(1, min(n, round(share * n)))
    pos = sample_positions(n, k, seed)
    assert pos.dtype == torch.int64 and pos.numel() == k
    assert pos.unique().numel() == k and bool((pos[1:] > pos[:-1]).all())
    assert int(pos.min()) >= 0 and int(pos.max()) < n
    assert torch.equal(sample_positions(n, k, seed), pos)


def test_sampler_is_order_k_not_order_n():
    """2**40 entries: a permutation of all of them would need 8 TiB."""
    pos = sample_positions(2**40, 50, seed=3)
    assert pos.numel() == 50 and pos.unique().numel() == 50 and int(pos.max()) < 2**40


@pytest.mark.parametrize("k", [3, 8])  # 3 of 20: draws with replacement; 8 of 20: randperm
def test_sampler_picks_every_position_equally_often(k):
    n, runs = 20, 3000
    counts = torch.zeros(n)
    pairs = 0
    for seed in range(runs):
        pos = sample_positions(n, k, seed)
        counts[pos] += 1
        pairs += int(((pos == 0) | (pos == 1)).sum() == 2)
    want = runs * k / n
    chi2 = float(((counts - want) ** 2 / want).sum())
    assert chi2 < 50.0, (counts, chi2)  # 19 degrees of freedom: P(chi2 > 50) < 1e-4
    # a uniform k-subset holds both 0 and 1 with probability k(k-1) / (n(n-1))
    p = k * (k - 1) / (n * (n - 1))
    assert abs(pairs / runs - p) < 5 * math.sqrt(p * (1 - p) / runs)


def test_shared_seed_gives_every_worker_the_same_positions_and_payloads_that_add_up():
    workers = [RandomK(density=0.05, shared_seed=7, seed=w) for w in range(3)]
    grads = [grad((40, 30), seed=w) for w in range(3)]
    sent = [c.compress(g, "fc.weight") for c, g in zip(workers, grads, strict=True)]
    kept = [c.decompress(p, ctx) != 0 for c, (p, ctx) in zip(workers, sent, strict=True)]
    assert all(torch.equal(kept[0], m) for m in kept[1:]) and all(c.summable for c in workers)
    total = sum(p[0] for p, _ in sent)  # the all-reduce of the values
    summed = workers[0].decompress((total,), sent[0][1])
    want = torch.where(kept[0], sum(grads), torch.zeros(()))  # sum of the kept entries
    torch.testing.assert_close(summed, want)
    # the next step draws new positions, still the same on every worker
    again = [c.decompress(*c.compress(g, "fc.weight")) != 0 for c, g in zip(workers, grads,
                                                                            strict=True)]
    assert torch.equal(again[0], again[2]) and not torch.equal(again[0], kept[0])


def test_own_seeds_give_different_positions_and_are_not_summable():
    a, b = RandomK(density=0.05, seed=0), RandomK(density=0.05, seed=1)
    g = grad((40, 30))
    assert not a.summable and not b.summable
    assert not torch.equal(a.decompress(*a.compress(g, "w")) != 0,
                           b.decompress(*b.compress(g, "w")) != 0)


def test_summable_compressors_decode_a_sum_of_payloads_to_the_sum():
    assert {n for n in NAMES if make(n).summable} == {"none", "fp16", "bf16"}
    for name in ("none", "fp16", "bf16"):
        c = make(name)
        (pa,), ctx = c.compress(grad(seed=1), "w")
        (pb,), _ = c.compress(grad(seed=2), "w")
        torch.testing.assert_close(c.decompress((pa.float() + pb.float(),), ctx),
                                   c.decompress((pa,), ctx) + c.decompress((pb,), ctx))


# -- norms and state ------------------------------------------------------------
def test_qsgd_norm_of_a_tiny_bucket_is_exact():
    """Squares of 1e-30 vanish in float32: such buckets are summed in float64."""
    x = grad((300,)) * 1e-30
    c = odt.compress.get("qsgd", levels=1, bucket_size=None)  # every entry: 0 or +-norm
    y = c.decompress(*c.compress(x, "w")).double()
    norm = float(x.double().norm())
    sent = y[y != 0].abs()
    assert sent.numel() > 0
    torch.testing.assert_close(sent, torch.full_like(sent, norm), rtol=1e-6, atol=0)


def test_dgc_keeps_its_state_when_it_refuses_a_non_finite_gradient():
    c = DGC(density=0.25, warmup=False)
    c.compress(grad((8,)), "w")
    u, v = c.velocity("w").clone(), c.accumulation("w").clone()
    bad = grad((8,), seed=1)
    bad[2] = float("inf")
    with pytest.raises(ValueError, match="'w' has 1 non-finite entries"):
        c.compress(bad, "w")
    assert torch.equal(c.velocity("w"), u) and torch.equal(c.accumulation("w"), v)


# -- names ------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_names_ignore_case_and_separators(name):
    for spelling in (name.upper(), name.title(), name.replace("-", "_").upper()):
        assert odt.compress.canonical_name(spelling) == name
        assert repr(make(spelling)) == repr(make(name))


def test_unknown_name_lists_every_choice():
    with pytest.raises(ValueError, match="unknown compressor 'dgx'.*Valid choices: none, "
                                         "fp16, bf16, topk, randomk, threshold, dgc"):
        odt.compress.canonical_name("dgx")


def test_dgc_in_capitals_keeps_the_worker_count_in_its_clipping_bound(task):
    """Local clipping bounds each worker's norm by clip_norm / sqrt(N): 'DGC' must train
    exactly as 'dgc' does, and differently from a bound computed with N = 1."""
    from odtkit.lab import lab_model

    model = lab_model(task, seed=0)
    kw = dict(workers=4, max_steps=3, density=0.01, clip_norm=0.01, optimizer="sgd", seed=0)
    runs = {label: odt.distributed.simulate(model, task, compressor=label, **kw).model
            for label in ("DGC", "dgc")}
    one = odt.distributed.simulate(model, task, compressor="dgc", num_workers=1, **kw).model
    for (name, p), q in zip(runs["DGC"].state_dict().items(),
                            runs["dgc"].state_dict().values(), strict=True):
        assert torch.equal(p, q), name
    assert any(not torch.equal(q, r) for q, r in zip(runs["dgc"].state_dict().values(),
                                                      one.state_dict().values(), strict=True))
