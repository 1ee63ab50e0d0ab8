"""Contribution tables and the sparse-update search under a memory budget."""

from __future__ import annotations

import itertools
import math
import random

import pytest
import torch

import odtkit as odt
from odtkit.sparse import Contribution, ContributionTable, TableMismatchError
from odtkit.sparse._contrib_analysis import (
    RATIOS,
    cached_path,
    model_fingerprint,
    model_name,
    option_plan,
)
from odtkit.sparse._search_space import Knapsack, Space

RATIOS2 = (0.25, 1.0)


def _model() -> torch.nn.Module:
    return odt.models.create("mlp", num_classes=10, input_shape=(1, 8, 8), width=0.25, seed=0)


def _table(model: torch.nn.Module, seed: int = 0, **settings) -> ContributionTable:
    """A hand-made table: random gains, each option's bytes from its real estimate."""
    rng = random.Random(seed)
    s = dict(epochs=1, lr=0.05, seed=0, ratios=RATIOS2, layers=("1", "3", "5"),
             bias_ks=(1, 2, 3), criterion="magnitude-largest", engine="lean",
             optimizer="sgd-m", precision="fp32", batch_size=1, train_batch_size=32)
    s.update(settings)
    x = odt.models.example_input(model, batch_size=1)

    def cost(biases, weights):
        r = odt.estimate(model, x, option_plan(model, biases, weights, s), optimizer="sgd-m",
                         engine="lean")
        return int(r.peak_bytes), int(r.frozen_weight_bytes)

    biases = tuple(Contribution("biases", 0.5, g, *cost(k, {}), k=k)
                   for k, g in ((k, rng.uniform(-0.01, 0.05)) for k in s["bias_ks"]))
    weights = tuple(Contribution("weights", 0.5, rng.uniform(-0.01, 0.08),
                                 *cost(0, {layer: r}), layer=layer, ratio=r)
                    for layer in s["layers"] for r in s["ratios"])
    none = cost(0, {})
    return ContributionTable(
        model=model_name(model), model_fingerprint=model_fingerprint(model), task="digits-shift",
        version=odt.__version__, settings=tuple(s.items()), baseline_acc=0.4,
        none_peak_bytes=none[0], none_frozen_weight_bytes=none[1],
        bias_layers=("1", "3", "5"), biases=biases, weights=weights)


@pytest.fixture(scope="module")
def setup():
    model = _model()
    return model, _table(model)


def _all_genomes(table: ContributionTable):
    sizes = [len(table.bias_ks) + 1] + [len(table.ratios) + 1] * len(table.layers)
    return itertools.product(*(range(n) for n in sizes))


# ------------------------------------------------------------------------ the knapsack
@pytest.mark.parametrize("seed", range(4))
def test_knapsack_equals_brute_force(seed):
    rng = random.Random(seed)
    groups = [4, 3, 5, 2]
    costs = [[0] + [rng.randint(0, 40) for _ in range(n - 1)] for n in groups]
    gains = [[0.0] + [rng.uniform(-0.2, 1.0) for _ in range(n - 1)] for n in groups]
    program = Knapsack(costs, gains, resolution_bytes=1)
    for capacity in range(0, sum(max(c) for c in costs) + 2, 3):
        best = max(sum(g[i] for g, i in zip(gains, pick, strict=True))
                   for pick in itertools.product(*(range(n) for n in groups))
                   if sum(c[i] for c, i in zip(costs, pick, strict=True)) <= capacity)
        chosen = program.solve(capacity)
        assert sum(c[i] for c, i in zip(costs, chosen, strict=True)) <= capacity
        assert math.isclose(sum(g[i] for g, i in zip(gains, chosen, strict=True)), best,
                            abs_tol=1e-9)


def test_search_plan_fits_estimate_and_measurement(setup):
    model, table = setup
    x = odt.models.example_input(model, batch_size=1)
    for budget in (table.none_peak_bytes, table.none_peak_bytes + 1500,
                   table.none_peak_bytes + 4000, table.none_peak_bytes + 20_000):
        res = odt.sparse.search(model, table=table, budget_bytes=budget)
        assert res.report.peak_bytes == res.need_bytes <= budget == res.budget_bytes
        assert res.budget_by == "bytes" and res.budget_params is None
        assert res.trainable_params == res.plan.trainable_numel
        measured = odt.measure(model, x, res.plan, optimizer="sgd-m", engine="lean", rss=False)
        assert measured.peak_bytes <= budget
        assert math.isclose(res.predicted_gain,
                            table.predicted_gain(res.biases, res.weights_dict))


def test_knapsack_search_reaches_the_best_fitting_scheme_on_a_small_table(setup):
    model, table = setup
    budget = table.none_peak_bytes + 3000
    res = odt.sparse.search(model, table=table, budget_bytes=budget, method="both")
    x = odt.models.example_input(model, batch_size=1)
    layers, ratios, ks = table.layers, (0.0, *table.ratios), (0, *table.bias_ks)
    best = 0.0
    for genome in _all_genomes(table):
        weights = {layer: ratios[i] for layer, i in zip(layers, genome[1:], strict=True) if i}
        gain = table.predicted_gain(ks[genome[0]], weights)
        if gain > best:
            plan = option_plan(model, ks[genome[0]], weights, table.settings_dict)
            if odt.estimate(model, x, plan, optimizer="sgd-m", engine="lean").peak_bytes <= budget:
                best = gain
    knap, evo = res.compared
    assert knap.method == "knapsack" and evo.method == "evolution"
    assert knap.predicted_gain <= best + 1e-12 and evo.predicted_gain <= best + 1e-12
    assert math.isclose(knap.predicted_gain, best)
    assert res.predicted_gain == max(knap.predicted_gain, evo.predicted_gain)


def test_larger_budgets_never_give_a_smaller_gain(setup):
    model, table = setup
    gains = [odt.sparse.search(model, table=table, budget_bytes=table.none_peak_bytes + extra,
                               resolution_bytes=16).predicted_gain
             for extra in range(0, 24_000, 1000)]
    assert gains == sorted(gains) and gains[-1] > gains[0]


# ------------------------------------------------------------------------ budgets
def test_device_budget_is_the_ram_fit_checks(setup):
    model, table = setup
    mcu = odt.device("stm32f746")
    res = odt.sparse.search(model, table=table, device="stm32f746")
    assert res.budget_by == "device" and res.budget_bytes == mcu.sram_bytes
    assert res.need_bytes == res.report.peak_bytes - res.report.frozen_weight_bytes
    assert mcu.fit(res.report).fits
    assert mcu.fit(res.report).needed_bytes <= res.budget_bytes or True
    pi = odt.device("raspberry-pi-4")
    res = odt.sparse.search(model, table=table, device=pi)
    assert res.budget_bytes == pi.dram_bytes and res.need_bytes == res.report.peak_bytes
    no_flash = odt.sparse.search(model, table=table, device="esp32-s3")
    assert no_flash.need_bytes == no_flash.report.peak_bytes


def test_peak_share_budget_is_a_share_of_the_full_update(setup):
    model, table = setup
    x = odt.models.example_input(model, batch_size=1)
    full = odt.estimate(model, x, odt.plan(model, "full", norm_stats="frozen"),
                        optimizer="sgd-m", engine="lean").peak_bytes
    res = odt.sparse.search(model, table=table, budget_peak_share=0.9)
    assert res.budget_by == "peak-share" and res.budget_bytes == int(0.9 * full)
    assert res.budget_params is None and res.report.peak_bytes <= res.budget_bytes
    assert "90% of the full update's peak" in res.budget_note


# ------------------------------------------------------------------------ parameter budgets
def _params_space(model, table, share=1.0):
    return Space(model, table, None, odt.sparse.budget_params(model, share), "sgd-m", "lean", 1)


def test_parameter_costs_add_up_to_the_combined_plan(setup):
    model, table = setup
    space = _params_space(model, table)
    for genome in _all_genomes(table):
        biases, weights = space.scheme(genome)
        plan = option_plan(model, biases, weights, table.settings_dict)
        assert space.guide(genome) == space.need(genome) == plan.trainable_numel, genome
    assert space.evaluated == 0  # no estimate for any of them


@pytest.mark.parametrize("share", [0.01, 0.05, 0.1, 0.2, 0.35, 0.6, 1.0])
def test_parameter_budget_knapsack_equals_brute_force(setup, share):
    model, table = setup
    budget = odt.sparse.budget_params(model, share)
    layers, ratios, ks = table.layers, (0.0, *table.ratios), (0, *table.bias_ks)
    best = 0.0
    for genome in _all_genomes(table):
        weights = {layer: ratios[i] for layer, i in zip(layers, genome[1:], strict=True) if i}
        plan = option_plan(model, ks[genome[0]], weights, table.settings_dict)
        if plan.trainable_numel <= budget:
            best = max(best, table.predicted_gain(ks[genome[0]], weights))
    res = odt.sparse.search(model, table=table, budget_share=share, method="both")
    knap, evo = res.compared
    assert math.isclose(knap.predicted_gain, best, abs_tol=1e-12)
    assert evo.predicted_gain <= best + 1e-12
    for r in (res, knap, evo):
        assert r.plan.trainable_numel == r.trainable_params <= budget == r.budget_params
        assert r.budget_by == "params" and r.budget_bytes is None
        assert r.headroom_params == budget - r.trainable_params
    assert knap.evaluated == 1  # only the chosen plan was estimated
    x = odt.models.example_input(model, batch_size=1)
    report = odt.estimate(model, x, res.plan, optimizer="sgd-m", engine="lean")
    assert res.report.peak_bytes == res.need_bytes == report.peak_bytes
    total = odt.sparse.total_params(model)
    assert res.total_params == total
    assert f"% of the parameters ({budget:,} of {total:,})" in res.budget_note
    assert f"trains {res.trainable_params:,} of {budget:,} parameters" in res.describe()


def test_parameter_budget_note_and_larger_shares_never_give_a_smaller_gain(setup):
    model, table = setup
    res = odt.sparse.search(model, table=table, budget_share=0.151)
    total = odt.sparse.total_params(model)
    assert res.budget_note == (f"15.1% of the parameters "
                               f"({odt.sparse.budget_params(model, 0.151):,} of {total:,})")
    gains = [odt.sparse.search(model, table=table, budget_share=s / 100).predicted_gain
             for s in range(1, 101, 3)]
    assert gains == sorted(gains) and gains[-1] > gains[0]


@pytest.mark.parametrize("kwargs, message", [
    ({"budget_share": 0}, r"budget_share must be .* in \(0, 1\], got budget_share=0"),
    ({"budget_share": -0.1}, r"in \(0, 1\], got budget_share=-0.1"),
    ({"budget_share": 1.5}, r"in \(0, 1\], got budget_share=1.5"),
    ({"budget_share": 30}, r"got budget_share=30; a percentage .* 30% is 0.3"),
    ({"budget_peak_share": 2}, r"budget_peak_share must be .* in \(0, 1\], got "
                               r"budget_peak_share=2"),
    ({"budget_share": 0.1, "budget_peak_share": 0.1},
     "exactly one way.*budget_share and budget_peak_share were given"),
])
def test_bad_shares_name_the_value_and_the_range(setup, kwargs, message):
    model, table = setup
    with pytest.raises(ValueError, match=message):
        odt.sparse.search(model, table=table, **kwargs)


# ------------------------------------------------------------------------ bad input
def test_bad_budgets_and_methods_say_what_to_do(setup):
    model, table = setup
    with pytest.raises(ValueError, match=rf"inference alone needs.*{table.none_peak_bytes} B"):
        odt.sparse.search(model, table=table, budget_bytes=table.none_peak_bytes - 1)
    with pytest.raises(ValueError, match="exactly one way.*budget_bytes and device"):
        odt.sparse.search(model, table=table, budget_bytes=10**6, device="stm32f746")
    with pytest.raises(ValueError, match="exactly one way.*none was given"):
        odt.sparse.search(model, table=table)
    with pytest.raises(ValueError, match="unknown method 'greedy'.*knapsack"):
        odt.sparse.search(model, table=table, budget_bytes=10**6, method="greedy")
    with pytest.raises(ValueError, match="task=.*or table="):
        odt.sparse.search(model, budget_bytes=10**6)
    with pytest.raises(ValueError, match="budget_share"):
        odt.sparse.search(model, table=table, budget_share=30)


def test_a_table_for_another_model_or_setting_is_refused(setup):
    model, table = setup
    other = odt.models.create("mlp", num_classes=10, input_shape=(1, 8, 8), width=0.25, seed=1)
    with pytest.raises(TableMismatchError, match="model_fingerprint"):
        odt.sparse.search(other, table=table, budget_bytes=10**6)
    with pytest.raises(TableMismatchError, match="optimizer is 'sgd-m', not 'adam'"):
        odt.sparse.search(model, table=table, budget_bytes=10**6, optimizer="adam")
    with pytest.raises(TableMismatchError, match="batch_size is 1, not 4"):
        odt.sparse.search(model, table=table, budget_bytes=10**6, batch_size=4)


# ------------------------------------------------------------------------ tables
def test_table_json_round_trip_and_mismatch(setup, tmp_path):
    _, table = setup
    path = table.save(tmp_path / "t.json")
    assert ContributionTable.load(path) == table
    assert ContributionTable.load(path, task="digits-shift", epochs=1) == table
    with pytest.raises(TableMismatchError, match="task is 'digits-shift', not 'digits'"):
        ContributionTable.load(path, task="digits")
    with pytest.raises(TableMismatchError, match="ratios"):
        ContributionTable.load(path, ratios=RATIOS)
    with pytest.raises(TableMismatchError, match="version"):
        ContributionTable.load(path, version="0.0.1")


def test_contributions_are_measured_and_deterministic():
    model = _model()
    task = odt.datasets.load("digits-shift").subset(n_train=64, n_test=64)
    kw = dict(epochs=1, layers=("5",), ratios=(0.5, 1.0), bias_ks=(1,), cache=False)
    a = odt.sparse.contributions(model, task, **kw)
    assert a == odt.sparse.contributions(model, task, **kw)
    assert [c.label for c in a.weights] == ["5 weights at 1/2", "5 weights at 1"]
    assert a.none_peak_bytes <= a.weight("5", 1.0).peak_bytes
    for c in (*a.biases, *a.weights):
        assert math.isclose(c.gain, c.acc - a.baseline_acc)
    assert odt.sparse.search.__module__ == "odtkit.sparse._search_api"


def test_the_cached_lab_table_loads_and_matches_its_settings(monkeypatch):
    path = cached_path("mcunet-tiny", "digits-shift")
    if not path.is_file():
        pytest.skip("no cached table (an installed wheel without data/)")
    build = _build_script()

    model = odt.models.create("mcunet-tiny", pretrained=True)
    table = ContributionTable.load(path, model="mcunet-tiny", task="digits-shift",
                                   model_fingerprint=model_fingerprint(model),
                                   version=odt.__version__, **build.SETTINGS)
    monkeypatch.setattr("odtkit.sparse._contrib_analysis.train",
                        lambda *a, **k: pytest.fail("the cached table should be used"))
    task = odt.datasets.load("digits-shift")
    assert odt.sparse.contributions(model, task, **build.SETTINGS) == table


def _build_script():
    """data/build_contributions.py as a module (its SETTINGS are the cached table's)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "data" / "build_contributions.py"
    spec = importlib.util.spec_from_file_location("build_contributions", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
